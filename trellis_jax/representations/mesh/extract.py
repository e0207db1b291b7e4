"""Mesh decoder features on the sparse 256³ grid -> triangle meshes (the reference's `SparseFeatures2Mesh`).

Per voxel, the 101 (53 without colour) channels are split as `mesh_channel_split` does; the sdf gets a
−1/res bias; FlexiCubes runs on the sparse cube table (`sparse_grid`, `flexicubes`); the slots are
compacted into static capacities with counts and an overflow flag. One jitted function for the batch.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from trellis_jax.models.slat_mesh_decoder import mesh_channel_split
from trellis_jax.representations.mesh.flexicubes import DualMesh, dual_mesh
from trellis_jax.representations.mesh.sparse_grid import build_cube_grid
from trellis_jax.sparse.tensor import SparseTensor, check_overflow


@struct.dataclass
class Mesh:
    """A batch of triangle meshes in world space [−0.5, 0.5]³ (z-up), padded to static capacities.

    vertices      f32   [B, V, 3]
    faces         int32 [B, F, 3]   vertex indices (padding rows are 0)
    vertex_attrs  f32   [B, V, A]   colour RGB + normal-map RGB in [0, 1] (A = 6; 0 without colour)
    num_vertices  int32 [B]
    num_faces     int32 [B]
    overflow      bool  [B]         a capacity (cubes, vertices or faces) was too small: the mesh is incomplete
    required      int32 [B, 3]      (cubes, vertices, faces) the sample needed; after a cube overflow the
                                    last two are lower bounds
    """

    vertices: jax.Array
    faces: jax.Array
    vertex_attrs: jax.Array
    num_vertices: jax.Array
    num_faces: jax.Array
    overflow: jax.Array
    required: jax.Array

    @property
    def vertex_mask(self) -> jax.Array:
        """bool [B, V]: the valid vertex rows."""
        return jnp.arange(self.vertices.shape[1])[None] < self.num_vertices[:, None]

    @property
    def face_mask(self) -> jax.Array:
        """bool [B, F]: the valid face rows."""
        return jnp.arange(self.faces.shape[1])[None] < self.num_faces[:, None]

    def sample(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host arrays (vertices [n, 3], faces [m, 3], vertex_attrs [n, A]) of sample b; raises
        `CapacityError` when that sample overflowed (an incomplete mesh is never returned)."""
        check_overflow(np.asarray(self.overflow[b : b + 1]), "mesh extraction")
        nv, nf = int(self.num_vertices[b]), int(self.num_faces[b])
        return (np.asarray(self.vertices[b, :nv]), np.asarray(self.faces[b, :nf]),
                np.asarray(self.vertex_attrs[b, :nv]))


def default_capacities(num_cubes: int) -> tuple[int, int, int]:
    """(max_cubes, max_vertices, max_faces) for L active cubes per sample: a decoded shell has fewer
    surface cubes than active ones, about one dual vertex per surface cube and two faces per vertex."""
    return num_cubes, num_cubes, 2 * num_cubes


def _compact(dm: DualMesh, max_vertices: int, max_faces: int):
    new_index = jnp.cumsum(dm.vertex_mask, dtype=jnp.int32) - 1
    nv = jnp.sum(dm.vertex_mask, dtype=jnp.int32)
    vdst = jnp.where(dm.vertex_mask, new_index, max_vertices)
    verts = jnp.zeros((max_vertices, 3), dm.vertices.dtype).at[vdst].set(dm.vertices, mode="drop")
    attrs = jnp.zeros((max_vertices, dm.colors.shape[-1]), dm.colors.dtype).at[vdst].set(dm.colors, mode="drop")
    face_index = jnp.cumsum(dm.face_mask, dtype=jnp.int32) - 1
    nf = jnp.sum(dm.face_mask, dtype=jnp.int32)
    fdst = jnp.where(dm.face_mask, face_index, max_faces)
    faces = jnp.zeros((max_faces, 3), jnp.int32).at[fdst].set(new_index[dm.faces], mode="drop")
    return verts, faces, attrs, nv, nf


def _extract_one(coords, feats, mask, resolution, max_cubes, max_vertices, max_faces, use_color):
    parts = mesh_channel_split(feats.astype(jnp.float32), use_color)
    color = parts["color"] if use_color else jnp.zeros(feats.shape[:1] + (8, 0), jnp.float32)
    sdf = parts["sdf"] + (-1.0 / resolution)
    grid = build_cube_grid(coords, mask, sdf, parts["deform"], color, parts["weights"], resolution, max_cubes)
    verts, faces, attrs, nv, nf = _compact(dual_mesh(grid), max_vertices, max_faces)
    overflow = grid.overflow | (nv > max_vertices) | (nf > max_faces)
    required = jnp.stack([grid.count, nv, nf])
    return verts, faces, attrs, jnp.minimum(nv, max_vertices), jnp.minimum(nf, max_faces), overflow, required


@partial(jax.jit, static_argnames=("resolution", "max_cubes", "max_vertices", "max_faces", "use_color"))
def _extract(coords, feats, mask, *, resolution, max_cubes, max_vertices, max_faces, use_color):
    fn = partial(_extract_one, resolution=resolution, max_cubes=max_cubes, max_vertices=max_vertices,
                 max_faces=max_faces, use_color=use_color)
    return Mesh(*jax.vmap(fn)(coords, feats, mask))


def extract_mesh(decoded: SparseTensor, max_cubes: Optional[int] = None, max_vertices: Optional[int] = None,
                 max_faces: Optional[int] = None) -> Mesh:
    """Mesh decoder output (SparseTensor [B, L, 101 or 53] on the res³ grid, res = decoded.resolution)
    -> Mesh. Capacities per sample default to `default_capacities(L)`; check `overflow` (or use
    `Mesh.sample`, which raises on it). Jittable inside a larger function; jitted once per shape here."""
    channels = decoded.feats.shape[-1]
    if channels not in (53, 101):
        raise ValueError(f"mesh features must have 101 (with colour) or 53 channels, got {channels}")
    dc, dv, df = default_capacities(decoded.capacity)
    return _extract(decoded.coords, decoded.feats, decoded.mask, resolution=decoded.resolution,
                    max_cubes=max_cubes or dc, max_vertices=max_vertices or dv, max_faces=max_faces or df,
                    use_color=channels == 101)


def extract_mesh_arrays(decoded: SparseTensor, capacities: Optional[tuple[int, int, int]] = None,
                        max_tries: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Host helper: every sample's (vertices [n, 3], faces [m, 3], vertex_attrs [n, A]) as numpy.
    Starts from `capacities` (default: `default_capacities` rounded up to multiples of 1024, so that
    few shapes are compiled) and, when a sample overflows, re-extracts with the capacities it reported
    needing (+25 %, rounded alike); raises `CapacityError` if that does not converge."""
    round_up = lambda n: -(-int(n) // 1024) * 1024
    caps = tuple(capacities or map(round_up, default_capacities(decoded.capacity)))
    for attempt in range(max_tries):
        mesh = extract_mesh(decoded, *caps)
        if not np.asarray(mesh.overflow).any() or attempt == max_tries - 1:
            return [mesh.sample(b) for b in range(decoded.batch_size)]  # `sample` raises on overflow
        need = np.asarray(mesh.required).max(0)
        if need[0] > caps[0]:  # vertex and face counts were lower bounds: scale them with the cubes
            ratio = np.array(default_capacities(1)) / default_capacities(1)[0]
            need = np.maximum(need, need[0] * ratio)
        caps = tuple(max(c, round_up(n * 5 // 4)) for c, n in zip(caps, need))
