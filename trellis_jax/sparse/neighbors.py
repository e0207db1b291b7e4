"""Neighbour lookup for submanifold convolution on padded voxel sets.

`neighbor_map` finds, for every voxel and every kernel offset, the row of the neighbouring voxel
in the same sample (or -1). It sorts linearised coordinates once and binary-searches every query,
so it needs no dense index grid and works unchanged at 32^3 ... 256^3 and beyond (memory O(L·K^3)).
Compute it once per resolution and reuse it for every convolution there, as the reference caches
its spconv index pairs.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Coordinates are linearised on a 1024^3 lattice (the reference's limit: coords in [0, 1023]).
COORD_LIMIT = 1024
_INVALID_KEY = np.iinfo(np.int32).max


def linear_key(coords: jax.Array) -> jax.Array:
    """int32 key of integer coords [..., 3] in [0, COORD_LIMIT); x slowest, z fastest."""
    c = coords.astype(jnp.int32)
    return (c[..., 0] * COORD_LIMIT + c[..., 1]) * COORD_LIMIT + c[..., 2]


def decode_key(key: jax.Array) -> jax.Array:
    """Inverse of `linear_key`: [...] -> coords [..., 3]."""
    z = key % COORD_LIMIT
    y = (key // COORD_LIMIT) % COORD_LIMIT
    x = key // (COORD_LIMIT * COORD_LIMIT)
    return jnp.stack([x, y, z], axis=-1).astype(jnp.int32)


def masked_keys(coords: jax.Array, mask: jax.Array) -> jax.Array:
    """Keys of valid rows; padding rows get the largest int32 so they sort last."""
    return jnp.where(mask, linear_key(coords), _INVALID_KEY)


def kernel_offsets(kernel_size: int) -> np.ndarray:
    """Offsets [K^3, 3] in the released weight order: index = k^2·r0 + k·r1 + r2, offset = r - k//2."""
    r = range(kernel_size)
    return np.array(list(itertools.product(r, r, r)), np.int32) - kernel_size // 2


def _neighbor_map_one(coords: jax.Array, mask: jax.Array, offsets: np.ndarray) -> jax.Array:
    keys = masked_keys(coords, mask)
    order = jnp.argsort(keys)
    sorted_keys = keys[order]
    query = coords[:, None, :] + jnp.asarray(offsets)[None]  # [L, K, 3]
    in_bounds = jnp.all((query >= 0) & (query < COORD_LIMIT), axis=-1)
    qkeys = jnp.where(in_bounds, linear_key(query), -1)
    pos = jnp.searchsorted(sorted_keys, qkeys.reshape(-1)).reshape(qkeys.shape)
    pos = jnp.minimum(pos, keys.shape[0] - 1)
    found = (sorted_keys[pos] == qkeys) & in_bounds & mask[:, None]
    return jnp.where(found, order[pos], -1).astype(jnp.int32)


def neighbor_map(coords: jax.Array, mask: jax.Array, kernel_size: int = 3) -> jax.Array:
    """Rows of each voxel's neighbours: coords [B, L, 3], mask [B, L] -> int32 [B, L, K^3].

    Entry [b, i, k] is the row j of sample b with coords[b, j] = coords[b, i] + offset_k, or -1 if
    that voxel is not active (or row i is padding). Offsets follow `kernel_offsets`.
    """
    offsets = kernel_offsets(kernel_size)
    return jax.vmap(lambda c, m: _neighbor_map_one(c, m, offsets))(coords, mask)
