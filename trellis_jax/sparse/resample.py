"""Sparse resampling: 2x mean-pool downsample, paired nearest upsample, and subdivision."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.sparse.neighbors import decode_key, masked_keys
from trellis_jax.sparse.tensor import SparseTensor, masked


def _downsample_one(coords, feats, mask, factor, reference_mean):
    L = mask.shape[0]
    keys = masked_keys(coords // factor, mask)
    order = jnp.argsort(keys, stable=True)
    sorted_keys = keys[order]
    valid_sorted = mask[order]
    is_new = valid_sorted & jnp.concatenate([jnp.ones_like(valid_sorted[:1]), sorted_keys[1:] != sorted_keys[:-1]])
    rank_sorted = jnp.cumsum(is_new, dtype=jnp.int32) - 1
    parent_sorted = jnp.where(valid_sorted, rank_sorted, L)  # L = out of range: dropped below
    # Scatter targets are built from the (batched) inputs, not fresh constants, so that under an
    # explicitly sharded batch they carry the batch sharding.
    parent = jnp.zeros_like(parent_sorted).at[order].set(parent_sorted)
    sums = jnp.zeros_like(feats, jnp.float32).at[parent].add(feats.astype(jnp.float32), mode="drop")
    counts = jnp.zeros_like(mask, jnp.float32).at[parent].add(mask.astype(jnp.float32), mode="drop")
    num_parents = jnp.sum(is_new, dtype=jnp.int32)
    new_mask = jnp.arange(L) < num_parents
    denom = counts + 1.0 if reference_mean else jnp.maximum(counts, 1.0)
    new_feats = (sums / denom[:, None]).astype(feats.dtype)
    new_coords = jnp.zeros_like(coords, jnp.int32).at[jnp.where(is_new, rank_sorted, L)].set(
        decode_key(sorted_keys), mode="drop"
    )
    return new_coords, masked(new_feats[None], new_mask[None])[0], new_mask, parent


def downsample(
    x: SparseTensor, factor: int = 2, reference_mean: bool = True, capacity: int | None = None
) -> tuple[SparseTensor, jax.Array]:
    """Pool each voxel into its parent ⌊p/factor⌋, averaging the features of its *active* children.

    `reference_mean=True` (default) reproduces the reference exactly: its `SparseDownsample` calls
    `torch.scatter_reduce(zeros, ..., reduce='mean')` with torch's default `include_self=True`, so
    the zero it starts from counts as one more element and a parent with n active children gets
    Σ children / (n + 1). The released SLat-flow weights were trained with this. `False` gives the
    plain mean Σ children / n.

    Returns (coarse, parent_index): coarse has coords [B, Lc, 3], feats [B, Lc, C], rows sorted by
    (x, y, z) as in the reference; parent_index int32 [B, L] maps every fine row to its coarse row
    (Lc for padding rows) and pairs with `upsample`. Lc = `capacity`, by default the fine capacity L
    (a sample never has more parents than children). A smaller `capacity` (parents are typically
    far fewer than voxels, and coarse-level attention costs Lc²) keeps the first `capacity` parents;
    a sample overflowed iff one of its valid fine rows has parent_index == capacity (see
    `downsample_overflow`).
    """
    coords, feats, mask, parent = jax.vmap(lambda c, f, m: _downsample_one(c, f, m, factor, reference_mean))(
        x.coords, x.feats, x.mask
    )
    if capacity is not None and capacity < x.capacity:
        coords, feats, mask = coords[:, :capacity], feats[:, :capacity], mask[:, :capacity]
        parent = jnp.minimum(parent, capacity)
    elif capacity is not None and capacity > x.capacity:
        pad = capacity - x.capacity
        coords = jnp.pad(coords, ((0, 0), (0, pad), (0, 0)))
        feats = jnp.pad(feats, ((0, 0), (0, pad), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
        parent = jnp.where(parent == x.capacity, capacity, parent)
    coarse = SparseTensor(coords, feats, mask, resolution=max(1, x.resolution // factor))
    return coarse, parent


def downsample_overflow(parent_index: jax.Array, fine_mask: jax.Array, capacity: int) -> jax.Array:
    """bool [B]: the sample had more parents than the `capacity` given to `downsample`
    (pass it to `check_overflow` on the host)."""
    return jnp.any(fine_mask & (parent_index >= capacity), axis=-1)


def upsample(coarse_feats: jax.Array, parent_index: jax.Array, fine: SparseTensor) -> SparseTensor:
    """Nearest unpooling paired with `downsample`: each fine voxel copies its parent's feature.

    coarse_feats [B, Lc, C], parent_index [B, L] -> SparseTensor on `fine`'s voxels (same order).
    """
    idx = jnp.minimum(parent_index, coarse_feats.shape[1] - 1)
    feats = jax.vmap(lambda f, i: f[i])(coarse_feats, idx)
    return SparseTensor(fine.coords, masked(feats, fine.mask), fine.mask, fine.resolution)


SUBDIVIDE_OFFSETS = np.array(
    [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.int32
)  # (0,0,0), (0,0,1), (0,1,0), ..., (1,1,1): z fastest, as the reference


def subdivide(x: SparseTensor) -> SparseTensor:
    """Split every voxel into its 8 children at 2p + o; features copied; capacity becomes 8L.

    Child o of row i is row 8i + o, so children of a parent are consecutive and the valid rows stay
    a prefix. The grid resolution doubles.
    """
    B, L = x.mask.shape
    coords = (2 * x.coords[:, :, None, :] + jnp.asarray(SUBDIVIDE_OFFSETS)[None, None]).reshape(B, 8 * L, 3)
    feats = jnp.repeat(x.feats, 8, axis=1)
    mask = jnp.repeat(x.mask, 8, axis=1)
    coords = jnp.where(mask[..., None], coords, 0)
    return SparseTensor(coords, feats, mask, resolution=2 * x.resolution)
