"""grain input pipelines for each TRELLIS training stage, reading the ArrayRecord dataset.

    loader = make_loader(DIR, "slat_flow", batch_size=8, buckets=(4096, 8192, 16384, 32768), cond="image")
    it = iter(loader); batch = next(it)        # dict of numpy arrays
    state = it.get_state(); ...; it.set_state(state)   # resumable (grain.checkpoint.CheckpointHandler
                                                       # saves/restores it inside an orbax checkpoint)

Per stage, batches hold (B = batch_size, shapes static for a given bucket):
  ss_vae     occupancy [B, 64, 64, 64, 1] float32
  slat_vae   coords [B, L, 3] int32, feats [B, L, 1024] float32, mask [B, L] bool (SparseTensor layout,
             valid rows first) + one random render per asset: image [B, R, R, 3] float32 in [0,1]
             (straight colour), alpha [B, R, R], extrinsics [B, 4, 4], intrinsics [B, 3, 3]
  rf_decoder coords/feats/mask as slat_vae (feats = the voxel DINO features the frozen encoder takes) +
             `views_per_asset` (K) random distinct stored views per asset: image [B, K, R, R, 3], alpha [B, K, R, R],
             extrinsics [B, K, 4, 4], intrinsics [B, K, 3, 3]
  mesh_decoder as rf_decoder, + depth [B, K, R, R] (camera z, 0 off the asset) and normal [B, K, R, R, 3]
             (world, facing the camera, in [0, 1]) from the record's views_depth_png / views_normal_png
  ss_flow    ss_latent [B, 16, 16, 16, 8] float32 (+ condition)
  slat_flow  coords/feats/mask with feats = normalised SLat latents [B, L, 8] (+ condition)
Condition (`cond=`): 'image' -> cond_image [B, 518, 518, 3] (random condition view, cropped around
the alpha bbox x1.2, resized, alpha-premultiplied: docs/reference_facts.md#conditions); 'text' -> caption [B]
(one random caption per sample; str array); None -> nothing.

L is the capacity: the smallest of `buckets` that fits the largest asset of the batch (length
bucketing keeps padding and the number of compiled shapes small); assets above `max_voxels` (the
reference keeps <= 32768) are filtered out. Records are sharded over JAX processes
(`jax.process_index/count`), shuffled per epoch with a seed, decoded and transformed in `worker_count`
spawned worker processes. A truncated or corrupt record raises `ShardError` naming shard and index,
unless `max_corrupt_records` > 0: then such records are skipped, each logged to stderr by shard and
index, and the run stops with `ShardError` once more than that many were skipped (counted per data
worker process). A dataset.json whose voxel_resolution differs from `resolution` is an error up front.
Multi-worker use needs parsed absl flags (`absl.flags.FLAGS.mark_as_parsed()`) and a `__main__` guard.
"""
from __future__ import annotations

import bisect
import json
import os
import sys
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from trellis_jax.data import schema, shards
from trellis_jax.slat_normalization import SLAT_MEAN, SLAT_STD

STAGES = ("ss_vae", "slat_vae", "rf_decoder", "mesh_decoder", "ss_flow", "slat_flow")
_VIEW_FIELDS = ("views_png", "views_png_offsets", "views_extrinsics", "views_intrinsics")
_GEOMETRY_FIELDS = ("views_depth_png", "views_depth_png_offsets", "views_normal_png", "views_normal_png_offsets")
_STAGE_FIELDS = {
    "ss_vae": ("coords",),
    "slat_vae": ("coords", "features") + _VIEW_FIELDS,
    "rf_decoder": ("coords", "features") + _VIEW_FIELDS,
    "mesh_decoder": ("coords", "features") + _VIEW_FIELDS + _GEOMETRY_FIELDS,
    "ss_flow": ("ss_latent",),
    "slat_flow": ("coords", "slat"),
}
_COND_FIELDS = ("cond_png", "cond_png_offsets")
CORRUPT = "__corrupt_record__"  # key of the marker element of a skipped record


class RecordSource(grain.sources.RandomAccessDataSource):
    """Decoded records over shards; wraps grain's ArrayRecordDataSource.

    Each element is a dict: the record's arrays restricted to `fields` (all when None) plus
    'id' (str), 'captions' (list[str]), 'num_voxels' (int) and 'depth_scale' (float, 0 when absent). Errors
    name shard and local index; a record lacking one of `required` (e.g. depth maps for the mesh decoder,
    in a dataset built before they were stored) is a ShardError, never skipped."""

    def __init__(self, paths: Sequence[str], fields: Sequence[str] | None = None, max_corrupt_records: int = 0,
                 required: Sequence[str] = ()):
        self.max_corrupt_records = int(max_corrupt_records)
        self._required = tuple(required)
        self.skipped: list[tuple[str, int]] = []
        self._paths = [str(p) for p in paths]
        if not self._paths:
            raise ValueError("RecordSource: no shards given")
        counts = []
        for path in self._paths:  # validates every shard up front (truncation, ids count)
            reader, n = shards.open_reader(path)
            shards.close_reader(reader)
            counts.append(n)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self._fields = tuple(fields) if fields is not None else None
        self._source = grain.sources.ArrayRecordDataSource(self._paths)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[str, int]:
        """(shard path, index inside the shard) of a global record index."""
        s = bisect.bisect_right(self._starts, index) - 1
        return self._paths[s], index - self._starts[s]

    def _corrupt(self, index: int, problem: str, cause: Exception) -> dict:
        """Raise ShardError for a bad record, or (skipping enabled, under the limit) log it and return a marker."""
        path, local = self.locate(index)
        if self.max_corrupt_records <= 0:
            raise shards.ShardError(f"{path}: record {local}{problem}") from cause
        self.skipped.append((path, local))
        if len(self.skipped) > self.max_corrupt_records:
            raise shards.ShardError(f"{path}: record {local}{problem}; that is {len(self.skipped)} corrupt records skipped, "
                                    f"more than max_corrupt_records={self.max_corrupt_records}: stopping") from cause
        print(f"data: skipping corrupt record {path}: record {local}{problem}; {len(self.skipped)} skipped so far "
              f"(limit {self.max_corrupt_records})", file=sys.stderr, flush=True)
        return {CORRUPT: True}

    def __getitem__(self, index) -> dict[str, Any]:
        index = int(index)
        try:
            buf = self._source[index]
        except Exception as e:
            return self._corrupt(index, f" unreadable ({e or type(e).__name__})", e)
        try:
            meta, arrays = schema.decode(buf, fields=self._fields)
        except schema.RecordError as e:
            return self._corrupt(index, f": {e}", e)
        missing = [k for k in self._required if k not in arrays]
        if missing:
            path, local = self.locate(index)
            raise shards.ShardError(f"{path}: record {local} ({meta['id']!r}) lacks {', '.join(missing)}; rebuild the "
                                    f"dataset with build-data (store_depth_normal=True) to train or evaluate on it")
        return {**arrays, "id": meta["id"], "captions": list(meta.get("captions", [])),
                "num_voxels": int(meta.get("num_voxels", len(arrays.get("coords", ())))),
                "depth_scale": float(meta.get("depth_scale", 0.0))}

    def __repr__(self):
        return f"RecordSource({len(self._paths)} shards, {len(self)} records)"


# ---------------------------------------------------------------------------------------- transforms
class DropCorrupt(grain.transforms.Filter):
    """Drops the markers RecordSource returns for skipped corrupt records."""

    def filter(self, element) -> bool:
        return CORRUPT not in element


class MaxVoxels(grain.transforms.Filter):
    """Keep assets with at most `max_voxels` voxels (reference: 32768)."""

    def __init__(self, max_voxels: int):
        self.max_voxels = max_voxels

    def filter(self, element) -> bool:
        return element["num_voxels"] <= self.max_voxels


def occupancy(indices: np.ndarray, resolution: int = 64) -> np.ndarray:
    """Dense occupancy [N, N, N, 1] float32 (channels-last) from voxel indices [L, 3]."""
    grid = np.zeros((resolution,) * 3 + (1,), np.float32)
    idx = np.asarray(indices, np.int64)
    grid[idx[:, 0], idx[:, 1], idx[:, 2], 0] = 1.0
    return grid


class OccupancyGrid(grain.transforms.Map):
    """coords -> occupancy [N, N, N, 1] float32."""

    def __init__(self, resolution: int = 64):
        self.resolution = resolution

    def map(self, element):
        top = int(np.max(element["coords"])) if len(element["coords"]) else 0
        if top >= self.resolution:
            raise ValueError(f"asset {element['id']!r} has voxel coordinates up to {top}, outside the {self.resolution}^3 "
                             f"grid the config asks for (the dataset was built at another voxel resolution)")
        return {**element, "occupancy": occupancy(element["coords"], self.resolution)}


class SparseFeatures(grain.transforms.Map):
    """Variable-length per-asset sparse set: {'coords' int32 [L,3], 'feats' float32 [L,C]} (+ kept keys).

    `source` names the feature array ('features' or 'slat'); `mean`/`std` standardise channels."""

    def __init__(self, source: str, mean=None, std=None, keep: Sequence[str] = ()):
        self.source, self.mean, self.std, self.keep = source, mean, std, tuple(keep)

    def map(self, element):
        feats = np.asarray(element[self.source], np.float32)
        if self.mean is not None:
            feats = (feats - self.mean) / self.std
        out = {"coords": np.asarray(element["coords"], np.int32), "feats": feats}
        out.update({k: element[k] for k in self.keep if k in element})
        return out


def _decode_png(element, prefix: str, index: int) -> np.ndarray:
    return schema.unpack_png(element[f"{prefix}_png"], element[f"{prefix}_png_offsets"], index)


class RandomRenderView(grain.transforms.RandomMap):
    """One random stored render (SLat-VAE supervision): image [R,R,3], alpha [R,R], cameras."""

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size

    def random_map(self, element, rng: np.random.Generator):
        n = len(element["views_png_offsets"]) - 1
        if n <= 0:
            raise ValueError(f"asset {element['id']!r} has no stored render views (store_views=0?)")
        v = int(rng.integers(n))
        rgba = _decode_png(element, "views", v)
        if self.image_size and rgba.shape[0] != self.image_size:
            rgba = np.asarray(Image.fromarray(rgba).resize((self.image_size,) * 2, Image.Resampling.LANCZOS))
        x = rgba.astype(np.float32) / 255.0
        out = {k: v_ for k, v_ in element.items() if not k.startswith("views_")}
        out.update(image=x[..., :3], alpha=x[..., 3], extrinsics=np.asarray(element["views_extrinsics"][v], np.float32),
                   intrinsics=np.asarray(element["views_intrinsics"][v], np.float32))
        return out


def _resize(x: np.ndarray, size: int | None, resample) -> np.ndarray:
    if not size or x.shape[0] == size:
        return x
    return np.asarray(Image.fromarray(x).resize((size, size), resample))


class RandomViews(grain.transforms.RandomMap):
    """`count` distinct random stored views (decoder supervision), stacked on a leading axis: image
    [K,R,R,3], alpha [K,R,R], extrinsics [K,4,4], intrinsics [K,3,3] (+ depth [K,R,R], normal [K,R,R,3]
    with `geometry`; resized nearest-neighbour, so no depth is blended across a silhouette)."""

    def __init__(self, count: int, image_size: int | None = None, geometry: bool = False):
        if count < 1:
            raise ValueError(f"views_per_asset must be >= 1, got {count}")
        self.count, self.image_size, self.geometry = int(count), image_size, geometry

    def random_map(self, element, rng: np.random.Generator):
        n = len(element["views_png_offsets"]) - 1
        if n < self.count:
            raise ValueError(f"asset {element['id']!r} has {n} stored render views, fewer than views_per_asset={self.count}")
        picks = rng.choice(n, self.count, replace=False)
        rgba = np.stack([_resize(_decode_png(element, "views", int(v)), self.image_size, Image.Resampling.LANCZOS)
                         for v in picks]).astype(np.float32) / 255.0
        out = {k: v_ for k, v_ in element.items() if not k.startswith("views_")}
        out.update(image=rgba[..., :3], alpha=rgba[..., 3],
                   extrinsics=np.asarray(element["views_extrinsics"][picks], np.float32),
                   intrinsics=np.asarray(element["views_intrinsics"][picks], np.float32))
        if self.geometry:
            d, o = element["views_depth_png"], element["views_depth_png_offsets"]
            q = [_resize(schema.unpack_png(d, o, int(v), mode=None), self.image_size, Image.Resampling.NEAREST) for v in picks]
            out["depth"] = np.stack(q).astype(np.float32) * np.float32(element["depth_scale"])
            d, o = element["views_normal_png"], element["views_normal_png_offsets"]
            nrm = [_resize(schema.unpack_png(d, o, int(v), mode="RGB"), self.image_size, Image.Resampling.NEAREST) for v in picks]
            out["normal"] = np.stack(nrm).astype(np.float32) / 255.0
        return out


def crop_condition_image(rgba: np.ndarray, size: int = 518, ratio: float = 1.2) -> np.ndarray:
    """Training-time condition crop (docs/reference_facts.md#conditions): square around the alpha>0 bbox,
    side x ratio, resize, premultiply -> float32 [size, size, 3] in [0, 1]."""
    ys, xs = np.nonzero(rgba[..., 3] > 0)
    if len(xs) == 0:
        raise ValueError("condition view is empty (alpha all zero)")
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 * ratio
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    img = Image.fromarray(rgba).crop(box).resize((size, size), Image.Resampling.LANCZOS)
    x = np.asarray(img, np.float32) / 255.0
    return x[..., :3] * x[..., 3:4]


class RandomCondition(grain.transforms.RandomMap):
    """Adds the condition: 'image' -> cond_image [S,S,3]; 'text' -> caption (str)."""

    def __init__(self, kind: str, image_size: int = 518):
        if kind not in ("image", "text"):
            raise ValueError(f"cond must be 'image', 'text' or None, got {kind!r}")
        self.kind, self.image_size = kind, image_size

    def random_map(self, element, rng: np.random.Generator):
        out = {k: v for k, v in element.items() if not k.startswith("cond_")}
        if self.kind == "text":
            caps = element["captions"]
            out["caption"] = np.str_(caps[int(rng.integers(len(caps)))] if caps else "")
        else:
            n = len(element["cond_png_offsets"]) - 1
            if n <= 0:
                raise ValueError(f"asset {element['id']!r} has no condition views")
            out["cond_image"] = crop_condition_image(_decode_png(element, "cond", int(rng.integers(n))), self.image_size)
        return out


class Select(grain.transforms.Map):
    """Keep only the named keys (drops strings/lists that do not batch)."""

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)

    def map(self, element):
        return {k: element[k] for k in self.keys if k in element}


class PadSparseBatch:
    """grain Batch `batch_fn`: stack samples, padding the sparse set to the smallest bucket that fits.

    -> coords [B, L, 3] int32, feats [B, L, C], mask [B, L] bool (valid rows first, padding zero)."""

    def __init__(self, buckets: Sequence[int]):
        self.buckets = tuple(sorted(int(b) for b in buckets))

    def __call__(self, samples: Sequence[dict]) -> dict:
        longest = max(len(s["coords"]) for s in samples)
        cap = next((b for b in self.buckets if b >= longest), None)
        if cap is None:
            raise ValueError(f"an asset has {longest} voxels, more than the largest bucket {self.buckets[-1]}; "
                             f"raise the buckets or lower max_voxels")
        B, C = len(samples), samples[0]["feats"].shape[-1]
        coords = np.zeros((B, cap, 3), np.int32)
        feats = np.zeros((B, cap, C), samples[0]["feats"].dtype)
        mask = np.zeros((B, cap), bool)
        for i, s in enumerate(samples):
            n = len(s["coords"])
            coords[i, :n], feats[i, :n], mask[i, :n] = s["coords"], s["feats"], True
        out = {"coords": coords, "feats": feats, "mask": mask}
        for key in samples[0]:
            if key not in out:
                out[key] = np.stack([s[key] for s in samples])
        return out


# ------------------------------------------------------------------------------------------- factory
def check_voxel_resolution(data_dir: str, resolution: int) -> None:
    """ValueError if DATA/dataset.json (written by build-data) was built at another voxel resolution."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.exists(path):
        return  # e.g. an encoded latent dataset: records are checked as they are read
    try:
        with open(path) as f:
            built = json.load(f).get("config", {}).get("voxel_resolution")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from e
    if built is not None and int(built) != int(resolution):
        raise ValueError(f"{path}: the dataset was built at voxel_resolution {built}, the config trains at {resolution}^3; "
                         f"rebuild the data or set the config's resolution to {built}")


def make_loader(data: str | Sequence[str], stage: str, *, batch_size: int, cond: str | None = None,
                buckets: Sequence[int] = (4096, 8192, 16384, 32768), max_voxels: int = 32768,
                resolution: int = 64, render_size: int | None = None, cond_image_size: int = 518,
                slat_normalization: tuple[np.ndarray, np.ndarray] | None = (np.array(SLAT_MEAN, np.float32), np.array(SLAT_STD, np.float32)),
                views_per_asset: int = 1, shuffle: bool = True, seed: int = 0, num_epochs: int | None = None, worker_count: int = 0,
                worker_buffer_size: int = 2, shard_index: int | None = None, shard_count: int | None = None,
                drop_remainder: bool = True, max_corrupt_records: int = 0) -> grain.DataLoader:
    """A grain DataLoader giving batches for `stage` (see module docstring). `data`: dataset dir or
    shard paths. Sharded by JAX process unless shard_index/shard_count are given."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
    if stage != "ss_flow" and isinstance(data, str):
        check_voxel_resolution(data, resolution)
    paths = shards.list_shards(data) if isinstance(data, str) else list(data)
    if not paths:
        raise FileNotFoundError(f"no committed shards under {data}")
    fields = _STAGE_FIELDS[stage] + (_COND_FIELDS if cond == "image" else ())
    source = RecordSource(paths, fields, max_corrupt_records, required=_GEOMETRY_FIELDS if stage == "mesh_decoder" else ())
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True),
        shuffle=shuffle, num_epochs=num_epochs, seed=seed)
    ops: list = [DropCorrupt()] if max_corrupt_records > 0 else []
    decoder = stage in ("rf_decoder", "mesh_decoder")
    sparse = stage in ("slat_vae", "slat_flow") or decoder
    if sparse:
        ops.append(MaxVoxels(min(max_voxels, max(buckets))))
    if stage == "ss_vae":
        ops.append(OccupancyGrid(resolution))
    elif stage == "slat_vae":
        ops.append(RandomRenderView(render_size))
    elif decoder:
        ops.append(RandomViews(views_per_asset, render_size, geometry=stage == "mesh_decoder"))
    if cond is not None:
        ops.append(RandomCondition(cond, cond_image_size))
    keys = {"ss_vae": ("occupancy",), "slat_vae": ("coords", "features", "image", "alpha", "extrinsics", "intrinsics"),
            "rf_decoder": ("coords", "features", "image", "alpha", "extrinsics", "intrinsics"),
            "mesh_decoder": ("coords", "features", "image", "alpha", "extrinsics", "intrinsics", "depth", "normal"),
            "ss_flow": ("ss_latent",), "slat_flow": ("coords", "slat")}[stage]
    keys += {"image": ("cond_image",), "text": ("caption",), None: ()}[cond]
    ops.append(Select(keys))
    if sparse:
        mean, std = slat_normalization if (stage == "slat_flow" and slat_normalization is not None) else (None, None)
        ops.append(SparseFeatures("slat" if stage == "slat_flow" else "features", mean, std,
                                  keep=tuple(k for k in keys if k not in ("coords", "features", "slat"))))
        ops.append(grain.transforms.Batch(batch_size, drop_remainder=drop_remainder, batch_fn=PadSparseBatch(buckets)))
    else:
        ops.append(grain.transforms.Batch(batch_size, drop_remainder=drop_remainder))
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=worker_count,
                            worker_buffer_size=worker_buffer_size)


def to_sparse_tensor(batch: dict, resolution: int = 64):
    """SparseTensor (trellis_jax.sparse) from a sparse batch's coords/feats/mask."""
    from trellis_jax.sparse import SparseTensor

    return SparseTensor(coords=batch["coords"], feats=batch["feats"], mask=batch["mask"], resolution=resolution)
