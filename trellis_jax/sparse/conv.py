"""Submanifold sparse 3D convolution (spconv `SubMConv3d` semantics) on padded voxel sets.

For every kernel offset k the features of each voxel's k-th neighbour are gathered (a zero row
for absent neighbours) and multiplied by kernel[k]; the K terms are accumulated in f32 by a
`lax.scan` over offsets, so the program holds one gathered [B, L, Cin] slab at a time and stays
small to compile however many convolutions a network has.

The backward pass is gathers too, never scatters: for odd kernels, submanifold neighbourhoods are
symmetric (j is the k-th neighbour of i iff i is the (K−1−k)-th neighbour of j, offsets being ±), so
∂feats is the same convolution of the output cotangent with the offset-flipped, transposed
kernel, and ∂kernel[k] = gather_k(feats)ᵀ · cotangent.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from trellis_jax.sparse.tensor import masked


def gather_rows(feats: jax.Array, index: jax.Array) -> jax.Array:
    """feats [B, L, C], index int [B, ...] with -1 for 'absent' -> [B, ..., C] (absent rows = 0)."""
    padded = jnp.concatenate([feats, jnp.zeros_like(feats[:, :1])], axis=1)
    idx = jnp.where(index < 0, feats.shape[1], index)
    return jax.vmap(lambda f, i: f[i])(padded, idx)


def _accumulate_offsets(x, index, kernel, precision):
    """Σ_k gather(x, index[..., k]) · kernel[k] in f32.

    x [B, L, Cin]; index [B, L, K] with L meaning 'absent' (reads an appended zero row);
    kernel [K, Cin, Cout] -> f32 [B, L, Cout].
    """
    padded = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)

    def term(index_k, kernel_k):
        x_k = jax.vmap(lambda p, i: p[i])(padded, index_k)
        return jnp.einsum("blc,cd->bld", x_k, kernel_k, precision=precision, preferred_element_type=jnp.float32)

    # Offset 0 outside the scan: the carry then starts with the inputs' (batch) sharding. The loop reads
    # kernel[k] in place (scanning over kernel[1:] copied the whole kernel: 58 MiB at 768 channels).
    index_k = jnp.moveaxis(index, -1, 0)  # [K, B, L]
    at = lambda a, k: jax.lax.dynamic_index_in_dim(a, k, keepdims=False)
    step = lambda acc, k: (acc + term(at(index_k, k), at(kernel, k)), None)
    out, _ = jax.lax.scan(step, term(index_k[0], kernel[0]), jnp.arange(1, kernel.shape[0]))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _submanifold(feats, index, kernel, precision):
    return _accumulate_offsets(feats, index, kernel, precision).astype(feats.dtype)


def _submanifold_fwd(feats, index, kernel, precision):
    return _submanifold(feats, index, kernel, precision), (feats, index, kernel)


def _submanifold_bwd(precision, residuals, cotangent):
    feats, index, kernel = residuals
    g = cotangent.astype(feats.dtype)
    flipped = jnp.flip(kernel, axis=0).transpose(0, 2, 1)  # [K, Cout, Cin], offset k <-> -offset
    d_feats = _accumulate_offsets(g, index, flipped, precision).astype(feats.dtype)
    padded = jnp.concatenate([feats, jnp.zeros_like(feats[:, :1])], axis=1)

    def kernel_grad(_, index_k):
        x_k = jax.vmap(lambda p, i: p[i])(padded, index_k)
        # per sample, then summed: contracting a (possibly sharded) batch axis directly is ambiguous
        per_sample = jnp.einsum("blc,bld->bcd", x_k, g, precision=precision, preferred_element_type=jnp.float32)
        return None, jnp.sum(per_sample, axis=0)

    _, d_kernel = jax.lax.scan(kernel_grad, None, jnp.moveaxis(index, -1, 0))
    return d_feats, None, d_kernel.astype(kernel.dtype)


_submanifold.defvjp(_submanifold_fwd, _submanifold_bwd)


def submanifold_conv3d(
    feats: jax.Array,
    neighbors: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    precision=None,
) -> jax.Array:
    """out[p] = bias + Σ_k kernel[k]ᵀ · feats[p + offset_k] over active neighbours only.

    feats [B, L, Cin]; neighbors int32 [B, L, K] from `neighbor_map` (for odd kernels the backward
    pass relies on its symmetry); kernel [K, Cin, Cout] (the released `[Cout, k, k, k, Cin]` through
    `kernel_from_torch`), cast to feats' dtype; bias [Cout]. Accumulates in f32 and returns
    [B, L, Cout] in feats' dtype; padding rows are zero when `mask` is given.
    """
    num_offsets = kernel.shape[0]
    if neighbors.shape[-1] != num_offsets:
        raise ValueError(f"neighbour map has {neighbors.shape[-1]} offsets, kernel has {num_offsets}")
    kernel = kernel.astype(feats.dtype)
    if num_offsets == 1:  # a 1x1x1 conv is a per-voxel linear map: no gather needed
        x = jnp.where((neighbors[..., :1] >= 0), feats, jnp.zeros((), feats.dtype))
        out = jnp.einsum("blc,cd->bld", x, kernel[0], precision=precision,
                         preferred_element_type=jnp.float32).astype(feats.dtype)
    else:
        index = jnp.where(neighbors < 0, feats.shape[1], neighbors)
        if num_offsets % 2:  # odd kernel: offsets come in ± pairs, the gather-only backward applies
            out = _submanifold(feats, index, kernel, precision)
        else:  # even kernel (unused by TRELLIS): plain autodiff of the forward
            out = _accumulate_offsets(feats, index, kernel, precision).astype(feats.dtype)
    if bias is not None:
        out = out + bias.astype(out.dtype)
    if mask is not None:
        out = masked(out, mask)
    return out


def kernel_from_torch(weight) -> jax.Array:
    """Released sparse-conv weight [Cout, k, k, k, Cin] -> [k^3, Cin, Cout] (offset k²·r0 + k·r1 + r2)."""
    cout, k0, k1, k2, cin = weight.shape
    return jnp.asarray(weight).reshape(cout, k0 * k1 * k2, cin).transpose(1, 2, 0)


def kernel_to_torch(kernel, kernel_size: int):
    """Inverse of `kernel_from_torch`: [k^3, Cin, Cout] -> [Cout, k, k, k, Cin]."""
    k3, cin, cout = kernel.shape
    return jnp.asarray(kernel).transpose(2, 0, 1).reshape(cout, kernel_size, kernel_size, kernel_size, cin)
