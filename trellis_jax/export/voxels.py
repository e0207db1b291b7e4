"""Voxel structures as point-cloud PLY (the reference's `voxels/*.ply`) and as a cube-mesh GLB."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trellis_jax.atomic import atomic_write
from trellis_jax.export.gaussian_ply import write_structured_ply


def voxel_centres(coords: np.ndarray, resolution: int = 64) -> np.ndarray:
    """Integer coords [L, 3] -> world centres (i + 0.5)/N − 0.5 in [−0.5, 0.5]³."""
    return (np.asarray(coords, np.float64) + 0.5) / resolution - 0.5


def save_voxel_ply(path, coords: np.ndarray, resolution: int = 64) -> Path:
    if len(coords) == 0:
        raise ValueError(f"{path}: refusing to write an empty voxel structure")
    c = voxel_centres(coords, resolution).astype(np.float32)
    v = np.empty(len(c), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    v["x"], v["y"], v["z"] = c[:, 0], c[:, 1], c[:, 2]
    return write_structured_ply(path, v)


def save_voxel_glb(path, coords: np.ndarray, resolution: int = 64, colors: np.ndarray | None = None) -> Path:
    """One cube per voxel, y-up as the reference's GLB export ((x, y, z) → (x, z, −y))."""
    import trimesh

    coords = np.asarray(coords)
    if len(coords) == 0:
        raise ValueError(f"{path}: refusing to write an empty voxel structure")
    box = trimesh.creation.box(extents=(1.0 / resolution,) * 3)
    centres = voxel_centres(coords, resolution)
    verts = (box.vertices[None] + centres[:, None]).reshape(-1, 3)
    faces = (box.faces[None] + np.arange(len(coords))[:, None, None] * len(box.vertices)).reshape(-1, 3)
    mesh = trimesh.Trimesh(to_y_up(verts), faces, process=False)
    if colors is not None:
        rgba = np.concatenate([np.clip(np.asarray(colors), 0, 1), np.ones((len(coords), 1))], -1)
        mesh.visual.vertex_colors = (np.repeat(rgba, len(box.vertices), 0) * 255).astype(np.uint8)
    return write_glb(path, mesh)


def to_y_up(vertices: np.ndarray) -> np.ndarray:
    """World z-up [N, 3] -> the GLB's y-up frame: (x, y, z) → (x, z, −y)."""
    v = np.asarray(vertices)
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], -1)


def write_glb(path, mesh) -> Path:
    """Write a trimesh object as binary glTF, atomically (unique temporary file renamed into place)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(mesh.export(file_type="glb")))
