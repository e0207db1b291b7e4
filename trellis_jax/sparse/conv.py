"""Submanifold sparse 3D convolution (spconv `SubMConv3d` semantics) on padded voxel sets."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.sparse.tensor import masked


def gather_rows(feats: jax.Array, index: jax.Array) -> jax.Array:
    """feats [B, L, C], index int [B, ...] with -1 for 'absent' -> [B, ..., C] (absent rows = 0)."""
    padded = jnp.concatenate([feats, jnp.zeros_like(feats[:, :1])], axis=1)
    idx = jnp.where(index < 0, feats.shape[1], index)
    return jax.vmap(lambda f, i: f[i])(padded, idx)


def submanifold_conv3d(
    feats: jax.Array,
    neighbors: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    precision=None,
) -> jax.Array:
    """out[p] = bias + sum_k kernel[k]^T · feats[p + offset_k] over active neighbours only.

    feats [B, L, Cin]; neighbors int32 [B, L, K] from `neighbor_map`; kernel [K, Cin, Cout]
    (the released `[Cout, k, k, k, Cin]` reshaped by `kernel_from_torch`); bias [Cout].
    Returns [B, L, Cout]; padding rows are zero when `mask` is given. One gathered matmul per offset
    (accumulated in order), so peak memory is O(L·Cin), not O(L·K·Cin).
    """
    num_offsets = kernel.shape[0]
    if neighbors.shape[-1] != num_offsets:
        raise ValueError(f"neighbour map has {neighbors.shape[-1]} offsets, kernel has {num_offsets}")
    out = None
    for k in range(num_offsets):
        x_k = gather_rows(feats, neighbors[..., k])
        term = jnp.einsum("blc,cd->bld", x_k, kernel[k].astype(feats.dtype), precision=precision)
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias.astype(out.dtype)
    if mask is not None:
        out = masked(out, mask)
    return out


def kernel_from_torch(weight) -> jax.Array:
    """Released sparse-conv weight [Cout, k, k, k, Cin] -> [k^3, Cin, Cout] (offset 9·r0+3·r1+r2)."""
    cout, k0, k1, k2, cin = weight.shape
    return jnp.asarray(weight).reshape(cout, k0 * k1 * k2, cin).transpose(1, 2, 0)


def kernel_to_torch(kernel, kernel_size: int):
    """Inverse of `kernel_from_torch`: [k^3, Cin, Cout] -> [Cout, k, k, k, Cin]."""
    k3, cin, cout = kernel.shape
    return jnp.asarray(kernel).transpose(2, 0, 1).reshape(cout, kernel_size, kernel_size, kernel_size, cin)
