"""Extracted meshes as vertex-coloured GLB (the fallback of the reference's textured `to_glb`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trellis_jax.export.voxels import to_y_up, write_glb


def save_mesh_glb(path, vertices: np.ndarray, faces: np.ndarray, vertex_attrs: np.ndarray | None = None) -> Path:
    """vertices [V, 3] (world, z-up), faces int [F, 3], vertex_attrs [V, A≥3] (RGB first, in [0, 1])
    -> GLB with y-up vertices and per-vertex colours (the normal-map channels are not written)."""
    import trimesh

    vertices, faces = np.asarray(vertices, np.float64).reshape(-1, 3), np.asarray(faces, np.int64).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise ValueError(f"{path}: refusing to write an empty mesh ({len(vertices)} vertices, {len(faces)} faces)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{path}: face indices outside [0, {len(vertices)})")
    mesh = trimesh.Trimesh(to_y_up(vertices), faces, process=False)
    if vertex_attrs is not None:
        rgb = np.clip(np.asarray(vertex_attrs, np.float64)[:, :3], 0, 1)
        rgba = np.concatenate([rgb, np.ones((len(rgb), 1))], -1)
        mesh.visual.vertex_colors = np.round(rgba * 255).astype(np.uint8)
    return write_glb(path, mesh)
