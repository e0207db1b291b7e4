"""Eval outputs: the paper-style markdown table, metrics.json, per-asset metrics.csv and picture grids.

Every file is written atomically (`trellis_jax.atomic`); a metric that was not computed is `null` in
JSON, empty in CSV and "–" in the table, never a made-up number.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from trellis_jax.atomic import atomic_write, atomic_write_text

# (column title, key in the aggregate, decimals); the paper's Table 1 / Table 2 layouts plus SSIM.
RECONSTRUCTION_COLUMNS = (("PSNR ↑", "psnr", 2), ("SSIM ↑", "ssim", 4), ("LPIPS ↓", "lpips", 3), ("CD ↓", "chamfer", 4),
                          ("F-score ↑", "f_score", 4), ("PSNR-N ↑", "psnr_normal", 2), ("LPIPS-N ↓", "lpips_normal", 3))
GENERATION_COLUMNS = (("CLIP ↑", "clip_score", 2), ("FD_dinov2 ↓", "fd_dinov2", 2), ("KD_dinov2 (×100) ↓", "kd_dinov2_x100", 2))


def mean_over_assets(rows: list[dict], keys) -> dict:
    """Mean of each key over the rows that have it (None when no row does)."""
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def markdown_table(columns, rows: list[tuple[str, dict]]) -> str:
    """rows [(method name, {key: value})] -> a markdown table in the given column layout."""
    fmt = lambda v, d: "–" if v is None else f"{v:.{d}f}"
    lines = ["| Method | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(vals.get(k), d) for _, k, d in columns) + " |")
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Per-asset rows (union of keys, in first-seen order) as CSV."""
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    f = io.StringIO()
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})
    atomic_write_text(path, f.getvalue())


def write_grid(path: Path, columns: dict[str, np.ndarray], max_views: int = 4) -> None:
    """PNG: one row per view (at most `max_views`), one column per entry of `columns` (e.g. ground
    truth | reconstruction | sample), each uint8 [V, R, R, 3]."""
    v = min(max_views, min(len(x) for x in columns.values()))
    rows = [np.concatenate([x[i] for x in columns.values()], axis=1) for i in range(v)]
    grid = np.concatenate(rows, axis=0)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
