"""Batched radiance-field voxels (the reference's `Strivec`: CP-decomposed local volumes per voxel)."""
from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Strivec:
    """Per active voxel (depth-log2(resolution) octree leaves):

    position     [B, L, 3]         voxel corner in [0, 1)³ aabb space ((p + 0.5)/res, the reference's value)
    trivec       [B, L, R, 3, D]   rank-R factor vectors per axis (D samples), already +1
    density      [B, L, R]
    features_dc  [B, L, R, 1, 3]
    mask         [B, L]
    resolution   static grid size
    """

    position: jax.Array
    trivec: jax.Array
    density: jax.Array
    features_dc: jax.Array
    mask: jax.Array
    resolution: int = struct.field(pytree_node=False, default=64)
