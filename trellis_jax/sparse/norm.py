"""Normalisation over padded voxel sets: per-token LayerNorm and per-sample GroupNorm."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.sparse.tensor import masked


def layer_norm(x: jax.Array, eps: float, scale: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis computed in f32 and cast back (the reference's LayerNorm32)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


def group_norm(
    feats: jax.Array,
    mask: jax.Array,
    num_groups: int,
    eps: float = 1e-5,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
) -> jax.Array:
    """GroupNorm32 per sample: statistics over (channels in group) × (valid voxels of the sample).

    feats [B, L, C], mask [B, L] -> [B, L, C] (f32 statistics, cast back; padding rows zero).
    """
    B, L, C = feats.shape
    if C % num_groups:
        raise ValueError(f"{C} channels are not divisible into {num_groups} groups")
    dtype = feats.dtype
    # Padding rows are zeroed first, not just weighted by 0: 0·NaN would still be NaN.
    x = masked(feats.astype(jnp.float32), mask).reshape(B, L, num_groups, C // num_groups)
    w = mask.astype(jnp.float32)[:, :, None, None]
    n = jnp.maximum(jnp.sum(w, axis=(1, 3), keepdims=True) * (C // num_groups), 1.0)
    mean = jnp.sum(x * w, axis=(1, 3), keepdims=True) / n
    var = jnp.sum(jnp.square(x - mean) * w, axis=(1, 3), keepdims=True) / n
    y = ((x - mean) * jax.lax.rsqrt(var + eps)).reshape(B, L, C)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return masked(y.astype(dtype), mask)
