"""Screen-tile binning shared by the mesh rasteriser and the Gaussian splatter, with static shapes.

Every item (a triangle, a splatted Gaussian) has a screen bounding box; `bin_boxes` expands the boxes into
(tile, item) pairs — at most `bin_capacity` of them, in item order — sorts them by tile (stable, so within a
tile the items keep their index order) and keeps each tile's first `tile_capacity` items. Pixel (i, j) has
its centre at screen coordinate (j + ½, i + ½); a box covers the pixels whose centres lie inside it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Bins(NamedTuple):
    """candidates int32 [tiles, tile_capacity] (item index, −1 = empty); count int32 [tiles] (generated
    pairs of each tile, kept or not); pairs int32 [] (all (tile, item) pairs the boxes ask for)."""

    candidates: jax.Array
    count: jax.Array
    pairs: jax.Array


def bin_boxes(lo: jax.Array, hi: jax.Array, valid: jax.Array, height_p: int, width_p: int, tile_size: int,
              tile_capacity: int, bin_capacity: int) -> Bins:
    """Boxes lo, hi [N, 2] (x, y in screen coordinates), valid bool [N], on a padded height_p × width_p
    image cut into tile_size² tiles -> `Bins`. A tile lost items when count > tile_capacity; items were
    lost everywhere past the first bin_capacity pairs when pairs > bin_capacity."""
    ntx, nty = width_p // tile_size, height_p // tile_size
    num_items = lo.shape[0]
    # pixel centres j + 0.5 inside [lo, hi]  <=>  j in [ceil(lo - 0.5), floor(hi - 0.5)]
    size = jnp.array([width_p, height_p], jnp.float32)
    first = jnp.ceil(jnp.clip(lo - 0.5, -1.0, size))
    last = jnp.floor(jnp.clip(hi - 0.5, -1.0, size))
    valid = valid & jnp.all(last >= first, -1) & jnp.all(last >= 0, -1) & jnp.all(first <= size - 1, -1)
    first = jnp.clip(first, 0, size - 1).astype(jnp.int32) // tile_size
    last = jnp.clip(last, 0, size - 1).astype(jnp.int32) // tile_size
    span = last - first + 1  # [N, 2] tiles along x, y
    count = jnp.where(valid, span[:, 0] * span[:, 1], 0)
    end = jnp.cumsum(count)
    start = end - count
    slot = jnp.arange(bin_capacity)
    item = jnp.minimum(jnp.searchsorted(end, slot, side="right"), num_items - 1)
    local = slot - start[item]
    tx = first[item, 0] + local % span[item, 0]
    ty = first[item, 1] + local // span[item, 0]
    num_tiles = ntx * nty
    key = jnp.where(slot < end[-1], ty * ntx + tx, num_tiles)
    order = jnp.argsort(key, stable=True)
    key_s, item_s = key[order], item[order]
    tiles = jnp.arange(num_tiles)
    t0 = jnp.searchsorted(key_s, tiles, side="left")
    t1 = jnp.searchsorted(key_s, tiles, side="right")
    k = jnp.arange(tile_capacity)
    idx = t0[:, None] + k[None]
    cand = jnp.where(idx < t1[:, None], item_s[jnp.minimum(idx, bin_capacity - 1)], -1)
    return Bins(cand, (t1 - t0).astype(jnp.int32), end[-1])
