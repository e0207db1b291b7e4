"""Data-pipeline configuration (ml_collections) and manifest reading.

`get_config()` gives the reference settings (150 views at 512^2, 24 condition views at 1024^2, 64^3
voxels, DINOv2 ViT-L/14-reg features). `load_config(path, overrides)` reads any python file with a
`get_config()` (e.g. experiments/data_pipeline_small.py) and applies `key=value` overrides.

Manifest: JSON (a list of entries, or {"assets": [...]}) or CSV with a header. Each entry has
`id` (unique), `path` (mesh file), optional `captions` (list of strings; in CSV a JSON list or a
'|'-separated string) and optional `up` ('y' or 'z'; default by file format, see ingest).
"""
from __future__ import annotations

import csv
import json
import os

import ml_collections

from trellis_jax.config_loader import ConfigKeyError, apply_overrides, load_module


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_views = 150  # VAE-supervision / feature views (Hammersley, r=2, FoV 40)
    c.resolution = 512
    c.num_cond_views = 24  # condition views (random radius/FoV)
    c.cond_resolution = 1024
    c.store_views = -1  # rendered views kept in the record as PNG (-1 all, 0 none)
    c.store_cond_views = -1
    c.store_depth_normal = True  # the stored views' depth (16-bit PNG) and normal (8-bit PNG) maps (mesh decoder, eval)
    c.voxel_resolution = 64
    c.encoder = "dinov2_vitl14_reg"  # or 'tiny' (random 1-layer stand-in)
    c.encoder_weights = ml_collections.FieldReference(None, field_type=str)  # HF-format DINOv2 dir
    c.encoder_image_size = 518
    c.batch_views = 8  # views per jitted encoder step
    c.voxel_bucket = 1024  # voxel sets padded to a power of two >= this (bounds recompiles)
    c.surface_points = 20000  # area-uniform mesh surface samples kept for the eval's Chamfer / F-score (0: none)
    c.shard_size = 32  # assets per ArrayRecord shard (a crash redoes at most one shard)
    c.seed = 0  # camera randomness: per asset from (seed, id)
    return c


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """A data config file's get_config() (default: the reference settings above), with `key=value`
    overrides applied by the one config loader; keys the reference settings lack are an error."""
    cfg = get_config() if path is None else load_module(path, "get_config").get_config()
    known = set(get_config().keys())
    unknown = set(cfg.keys()) - known
    if unknown:
        raise KeyError(f"unknown config key(s) {sorted(unknown)} in {path} (known: {sorted(known)})")
    try:
        return apply_overrides(cfg, overrides)
    except ConfigKeyError as e:
        raise KeyError(f"{e} (known: {sorted(known)})") from None


def read_manifest(path: str) -> list[dict]:
    """Manifest entries [{'id', 'path', 'captions', 'up'?}], paths resolved relative to the manifest."""
    base = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: manifest not found")
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            caps = (row.get("captions") or "").strip()
            if caps.startswith("["):
                row["captions"] = json.loads(caps)
            else:
                row["captions"] = [c for c in caps.split("|") if c] if caps else []
    else:
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        rows = data.get("assets") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f'{path}: expected a list of entries or {{"assets": [...]}} with id and path')
    entries, seen = [], set()
    for i, row in enumerate(rows):
        for key in ("id", "path"):
            if not row.get(key):
                raise ValueError(f"{path}: entry {i} has no {key!r}")
        if row["id"] in seen:
            raise ValueError(f"{path}: duplicate asset id {row['id']!r}")
        seen.add(row["id"])
        entry = {"id": str(row["id"]), "path": os.path.join(base, row["path"]),
                 "captions": list(row.get("captions") or [])}
        if row.get("up"):
            entry["up"] = row["up"]
        entries.append(entry)
    return entries


def write_manifest(path: str, entries: list[dict]):
    """Write a JSON manifest (paths stored relative to the manifest's directory when possible)."""
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for e in entries:
        row = dict(e)
        row["path"] = os.path.relpath(os.path.abspath(e["path"]), base)
        rows.append(row)
    from trellis_jax.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"assets": rows}, indent=1))
