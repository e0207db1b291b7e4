"""One asset through every stage: ingest -> render -> voxelise -> features -> record bytes.

`AssetProcessor` owns the expensive, reusable pieces (offscreen renderers, the jitted image encoder)
and is shared by the local driver (`build`) and the Beam pipeline. Per-stage wall time accumulates
in `timings` (seconds) for throughput reports.
"""
from __future__ import annotations

import collections
import hashlib
import time

import numpy as np

from trellis_jax.data import schema
from data_pipeline import cameras
from data_pipeline.ingest import AssetError, ingest

STAGES = ("ingest", "render", "render_cond", "voxelize", "features", "encode_record")


def asset_rng(seed: int, asset_id: str) -> np.random.Generator:
    """Deterministic per-asset randomness (camera offsets, condition radii), independent of order."""
    digest = hashlib.sha256(f"{seed}:{asset_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class AssetProcessor:
    def __init__(self, cfg, encoder=None):
        self.cfg = cfg
        self._encoder = encoder
        self._renderer = None
        self.timings = collections.defaultdict(float)
        self.stage = None  # stage running (or that failed) for the current asset
        self.warnings: list[str] = []  # non-fatal problems of the current asset (e.g. missing textures)

    @property
    def encoder(self):
        if self._encoder is None:
            from data_pipeline.features import make_image_encoder

            self._encoder = make_image_encoder(self.cfg.encoder, self.cfg.encoder_weights,
                                               image_size=self.cfg.encoder_image_size)
        return self._encoder

    def renderer(self, resolution: int):
        """The process's one offscreen renderer, set to `resolution`."""
        if self._renderer is None:
            from data_pipeline.render import Renderer

            self._renderer = Renderer(resolution)
        self._renderer.resolution = resolution
        return self._renderer

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _timed(self, stage, fn, *args, **kwargs):
        self.stage = stage
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] += time.perf_counter() - t

    def process(self, entry: dict) -> bytes:
        """Record bytes for one manifest entry; raises AssetError (with the stage) on bad assets."""
        from data_pipeline.features import voxel_features
        from data_pipeline.render import render_asset
        from data_pipeline.voxelize import voxelize

        cfg = self.cfg
        path = entry["path"]
        self.warnings = []
        asset = self._timed("ingest", ingest, path, entry.get("up"))
        self.warnings = list(asset.warnings)  # the builder logs them (warnings.jsonl); also kept in the record
        rng = asset_rng(cfg.seed, entry["id"])
        views = cameras.render_views(cfg.num_views, rng)
        cond = cameras.cond_views(max(cfg.num_cond_views, 0), rng)
        rendered = self._timed("render", render_asset, self.renderer(cfg.resolution), asset, views,
                               geometry=bool(cfg.get("store_depth_normal", True)) and cfg.store_views != 0)
        cond_rendered = (self._timed("render_cond", render_asset, self.renderer(cfg.cond_resolution), asset, cond)
                         if cfg.num_cond_views > 0 else None)
        vertices, faces = asset.geometry()
        coords = self._timed("voxelize", voxelize, vertices, faces, cfg.voxel_resolution)
        if len(coords) == 0:
            raise AssetError(f"{path}: zero voxels after voxelisation")
        feats = self._timed("features", voxel_features, self.encoder, rendered["images"], rendered["extrinsics"],
                            rendered["intrinsics"], coords, resolution=cfg.voxel_resolution,
                            batch_views=cfg.batch_views, voxel_bucket=cfg.voxel_bucket)
        if not np.all(np.isfinite(feats)):
            raise AssetError(f"{path}: non-finite voxel features")

        surface = None
        if cfg.get("surface_points", 0) > 0:
            import jax

            from trellis_jax.eval.surface import sample_surface

            key = jax.random.PRNGKey(int(rng.integers(2**31)))
            surface = np.asarray(sample_surface(key, vertices.astype(np.float32), faces.astype(np.int32),
                                                np.ones(len(faces), bool), int(cfg.surface_points)), np.float32)

        def _stored(r, keep):
            n = len(r["images"]) if keep < 0 else min(keep, len(r["images"]))
            return r["images"][:n], r["extrinsics"][:n], r["intrinsics"][:n]

        def _encode():
            arrays = {"coords": coords.astype(np.uint8 if cfg.voxel_resolution <= 256 else np.int32),
                      "features": feats}
            for prefix, r, keep in (("views", rendered, cfg.store_views), ("cond", cond_rendered, cfg.store_cond_views)):
                if r is None:
                    continue
                imgs, ext, intr = _stored(r, keep)
                if len(imgs) == 0:
                    continue
                arrays[f"{prefix}_png"], arrays[f"{prefix}_png_offsets"] = schema.pack_pngs(imgs)
                arrays[f"{prefix}_extrinsics"], arrays[f"{prefix}_intrinsics"] = ext, intr
                if "depth" in r:
                    arrays[f"{prefix}_depth_png"], arrays[f"{prefix}_depth_png_offsets"] = schema.pack_depth(r["depth"][:len(imgs)])
                    arrays[f"{prefix}_normal_png"], arrays[f"{prefix}_normal_png_offsets"] = schema.pack_normals(r["normal"][:len(imgs)])
            if surface is not None:
                arrays["surface_points"] = surface
            meta = {"id": entry["id"], "captions": list(entry.get("captions", [])), "source": path,
                    "resolution": int(cfg.voxel_resolution), "num_voxels": int(len(coords)),
                    "scale": float(asset.scale), "offset": [float(x) for x in asset.offset],
                    "feature_model": self.encoder.name, "warnings": list(asset.warnings)}
            if "depth" in rendered:
                meta["depth_scale"] = schema.DEPTH_SCALE
            return schema.encode(meta, arrays)

        return self._timed("encode_record", _encode)
