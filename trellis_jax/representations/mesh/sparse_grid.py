"""The grid FlexiCubes runs on, built from a sparse set of active cubes without the dense grid.

The reference scatters the active cubes' per-corner attributes into a dense (res+1)³ vertex grid
(unset vertices: sdf +1, everything else 0) and runs on all res³ cubes. Only cubes with a sign change
emit geometry, and every negative vertex belongs to an active cube, so the cubes that matter are the
active cubes with a sign change and their 26 neighbours that share a negative corner with them (an
active neighbour is listed by a cube next to it only when their shared corners already change sign:
otherwise it lists itself if it has a sign change). Here (one sample,
static shapes, keys sorted so that lookups are binary searches):

  vertex table   the distinct corners of the active cubes, attributes averaged over the cubes sharing them
  cube table     the candidate cubes (sorted keys, capacity K) with their 8 corners' attributes
                 looked up in the vertex table (unset corners get the reference's defaults) and their
                 weights looked up among the active cubes (0 for inactive cubes, as in the reference)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from trellis_jax.representations.mesh.cube_tables import CORNERS, NEIGHBOUR_OFFSETS, SHARED_CORNERS

SENTINEL = np.iinfo(np.int32).max  # sorts after every real key


def grid_key(xyz: jax.Array, size: int) -> jax.Array:
    """Integer positions [..., 3] in [0, size)³ -> x-major linear keys [...] (int32)."""
    xyz = xyz.astype(jnp.int32)
    return (xyz[..., 0] * size + xyz[..., 1]) * size + xyz[..., 2]


def grid_position(key: jax.Array, size: int) -> jax.Array:
    """Inverse of `grid_key`: keys [...] -> positions [..., 3] (int32)."""
    return jnp.stack([key // (size * size), (key // size) % size, key % size], -1).astype(jnp.int32)


def _runs(s: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sorted keys [N] -> (index of each key's run among the distinct keys, clipped to `size` for
    SENTINEL and overflow, the distinct keys [size] SENTINEL-padded, their count)."""
    real = s != SENTINEL
    first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]]) & real
    seg = jnp.cumsum(first, dtype=jnp.int32) - 1
    slot = jnp.where(real & (seg < size), seg, size)
    unique = jnp.full((size,), SENTINEL, jnp.int32).at[slot].set(s, mode="drop")
    return slot, unique, jnp.sum(first, dtype=jnp.int32)


def unique_keys(keys: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Distinct keys of `keys` [N] (SENTINEL = no key), increasing, SENTINEL-padded to `size`, and
    their count [] (which may exceed `size`: overflow)."""
    _, unique, count = _runs(jnp.sort(keys), size)
    return unique, count


def sorted_unique(keys: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As `unique_keys`, plus slot [N]: each key's index in the distinct keys (size where it has none).
    Returns (unique [size], slot [N], count [])."""
    order = jnp.argsort(keys)
    slot_sorted, unique, count = _runs(keys[order], size)
    return unique, jnp.zeros_like(slot_sorted).at[order].set(slot_sorted), count


def lookup(table: jax.Array, queries: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of each query key in a sorted key table (SENTINEL-padded) and whether it is there."""
    idx = jnp.clip(jnp.searchsorted(table, queries), 0, table.shape[0] - 1).astype(jnp.int32)
    return idx, (table[idx] == queries) & (queries != SENTINEL)


@struct.dataclass
class CubeGrid:
    """The candidate cubes of one sample (K slots, sorted by key; padding slots hold SENTINEL).

    keys          int32 [K]        x-major cube keys on the res³ cube grid
    coords        int32 [K, 3]
    valid         bool  [K]
    sdf           f32   [K, 8]     corner sdf (bias included; +1 at unset vertices)
    deform        f32   [K, 8, 3]  corner deformation logits (0 at unset vertices)
    color         f32   [K, 8, C]  corner colour logits (0 at unset vertices); C may be 0
    weights       f32   [K, 21]    raw FlexiCubes weights (β 0–11, α 12–19, γ 20); 0 for inactive cubes
    count         int32 []         candidate cubes found (> K means overflow)
    resolution    cube grid size
    """

    keys: jax.Array
    coords: jax.Array
    valid: jax.Array
    sdf: jax.Array
    deform: jax.Array
    color: jax.Array
    weights: jax.Array
    count: jax.Array
    resolution: int = struct.field(pytree_node=False, default=256)

    @property
    def overflow(self) -> jax.Array:
        return self.count > self.keys.shape[0]

    def vertex_positions(self) -> jax.Array:
        """World positions of the corners [K, 8, 3]: v/res − 0.5 + (1 − 1e-8)/(2·res)·tanh(deform)."""
        res = self.resolution
        v = (self.coords[:, None, :] + jnp.asarray(CORNERS)[None]).astype(jnp.float32)
        return v / res - 0.5 + (1 - 1e-8) / (2 * res) * jnp.tanh(self.deform)


def build_cube_grid(coords: jax.Array, mask: jax.Array, sdf: jax.Array, deform: jax.Array, color: jax.Array,
                    weights: jax.Array, resolution: int, max_cubes: int) -> CubeGrid:
    """One sample's active cubes -> its candidate cube table.

    coords int [L, 3], mask bool [L], sdf [L, 8] (bias already added), deform [L, 8, 3],
    color [L, 8, C], weights [L, 21]; `max_cubes` = K, the static capacity of the table.
    """
    L = coords.shape[0]
    res, vres = resolution, resolution + 1
    corners = jnp.asarray(CORNERS)
    # Vertex table: distinct corners, attributes averaged over the active cubes that share them.
    vkeys = jnp.where(mask[:, None], grid_key(coords[:, None, :] + corners[None], vres), SENTINEL)  # [L, 8]
    vtable, vslot, _ = sorted_unique(vkeys.reshape(-1), 8 * L)
    attrs = jnp.concatenate([sdf[..., None], deform, color], -1).reshape(8 * L, -1)
    total = jax.ops.segment_sum(attrs, vslot, num_segments=8 * L + 1)[:-1]
    n = jax.ops.segment_sum(jnp.ones((8 * L,), jnp.float32), vslot, num_segments=8 * L + 1)[:-1]
    vattrs = total / jnp.maximum(n, 1.0)[:, None]
    # Active cubes, sorted by key (for the weights and for "is this neighbour active").
    akeys = jnp.where(mask, grid_key(coords, res), SENTINEL)
    arow = jnp.argsort(akeys)
    akeys_sorted = akeys[arow]
    # Candidates (see the module docstring): o = 0 lists an active cube iff it has a sign change.
    negative = (vattrs[jnp.minimum(vslot, 8 * L - 1), 0].reshape(L, 8) < 0) & mask[:, None]
    shared = jnp.asarray(SHARED_CORNERS)[None]  # [1, 27, 8]
    touches = jnp.any(negative[:, None, :] & shared, -1)  # [L, 27]
    mixed = touches & jnp.any(~negative[:, None, :] & shared, -1)
    cpos = coords[:, None, :] + jnp.asarray(NEIGHBOUR_OFFSETS)[None]
    inside = jnp.all((cpos >= 0) & (cpos < res), -1) & mask[:, None]
    ckeys = jnp.where(inside, grid_key(cpos, res), SENTINEL)
    _, active = lookup(akeys_sorted, ckeys)
    ckeys = jnp.where(touches & (mixed | ~active), ckeys, SENTINEL).reshape(-1)
    cube_keys, count = unique_keys(ckeys, max_cubes)
    valid = cube_keys != SENTINEL
    ccoords = jnp.where(valid[:, None], grid_position(cube_keys, res), 0)
    # Corner attributes from the vertex table (reference defaults where a corner is no active vertex).
    qkeys = jnp.where(valid[:, None], grid_key(ccoords[:, None, :] + corners[None], vres), SENTINEL)  # [K, 8]
    vidx, vfound = lookup(vtable, qkeys)
    cattrs = jnp.where(vfound[..., None], vattrs[vidx], 0.0)
    csdf = jnp.where(vfound, cattrs[..., 0], 1.0)
    # Weights from the active cubes (0 elsewhere).
    aidx, afound = lookup(akeys_sorted, jnp.where(valid, cube_keys, SENTINEL))
    cweights = jnp.where(afound[:, None], weights[arow[aidx]], 0.0)
    return CubeGrid(cube_keys, ccoords, valid, csdf, cattrs[..., 1:4], cattrs[..., 4:], cweights, count, res)
