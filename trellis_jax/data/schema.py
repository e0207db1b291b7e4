"""Versioned record format of the trellis-jax dataset (one ArrayRecord record per asset).

Byte layout of a record (little-endian):

    b"TJDR" | u16 schema version | u32 header length H | H bytes UTF-8 JSON header | payload

The JSON header is {"meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...],
"payload_bytes": N}; each array is the raw C-order bytes at `offset` in the payload. Decoding checks
the magic, the version, the total length and every array's extent, so a truncated or corrupted record
raises `RecordError` instead of yielding garbage.

Schema version 1 (SCHEMA_VERSION):

meta (JSON):
  id            str        asset id (manifest id; the reference uses the file's sha256)
  captions      list[str]  may be empty
  source        str        path the asset was read from
  resolution    int        voxel grid size N (64)
  num_voxels    int        L
  scale, offset float, [3] normalisation: world = (file_z_up + offset) * scale
  feature_model str        image encoder that produced `features` (e.g. 'dinov2_vitl14_reg', 'tiny')
  depth_scale   float      metres (world units) per step of the 16-bit depth PNGs (with views_depth_png)
arrays:
  coords            uint8   [L, 3]   surface-voxel indices (x, y, z), sorted, unique
  features          float16 [L, C]   mean DINOv2 patch tokens (C = 1024 for ViT-L)
  views_png         uint8   [B]      the VAE-supervision renders, PNG-encoded RGBA, concatenated
  views_png_offsets int64   [V + 1]  byte offsets of each PNG inside views_png
  views_extrinsics  float32 [V, 4, 4] world->camera (OpenCV)
  views_intrinsics  float32 [V, 3, 3] normalised intrinsics
  views_depth_png, views_depth_png_offsets   uint8 [B'], int64 [V + 1]  (optional) per stored view, camera-space
                    depth as 16-bit grayscale PNG: depth = value * meta['depth_scale'] (0 = no surface)
  views_normal_png, views_normal_png_offsets uint8 [B''], int64 [V + 1] (optional) per stored view, the world
                    normal of the visible face, facing the camera, mapped to [0, 1], as 8-bit RGB PNG (0 off the asset)
  cond_png, cond_png_offsets, cond_extrinsics, cond_intrinsics: the same for the condition renders
  surface_points    float32 [P, 3]   area-uniform samples of the normalised mesh surface (optional; the ground truth
                                     of the eval's Chamfer distance / F-score; P = build config `surface_points`)
added by the encode stage (optional):
  ss_latent         float32 [16, 16, 16, 8]  SS-VAE posterior mean, channels-last
  slat              float32 [L, 8]           SLat-VAE posterior mean, rows aligned with coords
"""
from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

MAGIC = b"TJDR"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)
_PREFIX = struct.Struct("<4sHI")

REQUIRED_META = ("id",)
REQUIRED_ARRAYS = ("coords", "features")
OPTIONAL_ARRAYS = ("views_png", "views_png_offsets", "views_extrinsics", "views_intrinsics", "views_depth_png",
                   "views_depth_png_offsets", "views_normal_png", "views_normal_png_offsets", "cond_png",
                   "cond_png_offsets", "cond_extrinsics", "cond_intrinsics", "surface_points", "ss_latent", "slat")


class RecordError(ValueError):
    """A record that cannot be decoded (truncated, corrupt, wrong version, missing field)."""


def encode(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise one asset. `meta` must be JSON-serialisable; arrays keep dtype and shape."""
    for key in REQUIRED_META:
        if key not in meta:
            raise RecordError(f"record meta lacks required key {key!r}")
    entries, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == object:
            raise RecordError(f"array {name!r} has dtype object; store strings in meta")
        data = arr.tobytes()
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                        "nbytes": len(data)})
        chunks.append(data)
        offset += len(data)
    header = json.dumps({"meta": meta, "arrays": entries, "payload_bytes": offset}, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, SCHEMA_VERSION, len(header)) + header + b"".join(chunks)


def decode(buf: bytes, *, fields: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """-> (meta, arrays). `fields` limits which arrays are materialised (all by default).

    Arrays are read-only views into `buf` (no copy)."""
    if len(buf) < _PREFIX.size:
        raise RecordError(f"record truncated: {len(buf)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, hlen = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise RecordError(f"not a trellis-jax record (magic {magic!r}, expected {MAGIC!r})")
    if version not in SUPPORTED_VERSIONS:
        raise RecordError(f"unsupported schema version {version} (this code reads {SUPPORTED_VERSIONS})")
    start = _PREFIX.size + hlen
    if len(buf) < start:
        raise RecordError(f"record truncated inside its header ({len(buf)} of >= {start} bytes)")
    try:
        header = json.loads(bytes(buf[_PREFIX.size:start]))
    except ValueError as e:
        raise RecordError(f"corrupt record header: {e}") from e
    total = start + header["payload_bytes"]
    if len(buf) != total:
        raise RecordError(f"record truncated or padded: {len(buf)} bytes, header says {total}")
    meta = header["meta"]
    names = [e["name"] for e in header["arrays"]]
    for key in REQUIRED_META:
        if key not in meta:
            raise RecordError(f"record lacks meta {key!r}")
    for key in REQUIRED_ARRAYS:
        if key not in names:
            raise RecordError(f"record {meta.get('id')!r} lacks array {key!r}")
    arrays = {}
    view = memoryview(buf)[start:]
    for e in header["arrays"]:
        if fields is not None and e["name"] not in fields:
            continue
        dtype = np.dtype(e["dtype"])
        count = int(np.prod(e["shape"], dtype=np.int64))
        if e["offset"] + e["nbytes"] > header["payload_bytes"] or count * dtype.itemsize != e["nbytes"]:
            raise RecordError(f"record {meta.get('id')!r}: array {e['name']!r} extent is inconsistent")
        arrays[e["name"]] = np.frombuffer(view, dtype, count, e["offset"]).reshape(e["shape"])
    return meta, arrays


# ---------------------------------------------------------------------------- image packing
DEPTH_SCALE = 4.0 / 65535  # depth PNG step: camera z up to 4 (the views sit at radius 2 of a unit cube)


def pack_pngs(images: np.ndarray, threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images [V, H, W, 4|3] uint8 or [V, H, W] uint16 -> (PNG bytes uint8 [B], offsets int64 [V + 1]).
    zlib releases the GIL, so images are encoded on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(img):
        f = io.BytesIO()
        Image.fromarray(np.asarray(img)).save(f, format="PNG", compress_level=1)
        return np.frombuffer(f.getvalue(), np.uint8)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        blobs = list(pool.map(one, images))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def unpack_png(data: np.ndarray, offsets: np.ndarray, index: int, mode: str | None = "RGBA") -> np.ndarray:
    """One image out of a packed PNG array: converted to `mode` (RGBA uint8 [H, W, 4] by default), or
    as stored with mode=None (e.g. uint16 [H, W] for depth)."""
    from PIL import Image

    if not 0 <= index < len(offsets) - 1:
        raise IndexError(f"image {index} out of range ({len(offsets) - 1} images)")
    blob = data[offsets[index]:offsets[index + 1]].tobytes()
    img = Image.open(io.BytesIO(blob))
    if mode is None:
        arr = np.asarray(img)
        return arr.astype(np.uint16) if img.mode.startswith("I") else arr
    return np.asarray(img.convert(mode))


def pack_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space depth f32 [V, H, W] (0 = none) -> 16-bit PNGs in steps of DEPTH_SCALE."""
    q = np.clip(np.rint(np.asarray(depth, np.float64) / DEPTH_SCALE), 0, 65535).astype(np.uint16)
    return pack_pngs(q)


def unpack_depth(data: np.ndarray, offsets: np.ndarray, index: int, scale: float) -> np.ndarray:
    """One depth map f32 [H, W] out of `pack_depth`'s PNGs (`scale`: the record's meta['depth_scale'])."""
    return unpack_png(data, offsets, index, mode=None).astype(np.float32) * np.float32(scale)


def pack_normals(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal maps f32 [V, H, W, 3] in [0, 1] -> 8-bit RGB PNGs."""
    return pack_pngs(np.clip(np.rint(np.asarray(normal) * 255.0), 0, 255).astype(np.uint8))


def unpack_normal(data: np.ndarray, offsets: np.ndarray, index: int) -> np.ndarray:
    """One normal map f32 [H, W, 3] in [0, 1] out of `pack_normals`'s PNGs."""
    return unpack_png(data, offsets, index, mode="RGB").astype(np.float32) / 255.0
