"""Linear layers and norms with the reference's initialisation and logical sharding axes."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.sparse.norm import layer_norm

Dtype = Any


# Tokens per slice of `row_chunked`: a [2048, 4·1024] f32 hidden is 32 MiB, where the whole hidden of a
# 24K-voxel decoder trunk is 390 MiB that each elementwise op between the two matmuls streams through memory
# (and XLA CPU's matmul ran a [24856, 768] x [768, 3072] product at 268 GFLOP/s, 2,048-row slices at 452).
ROW_CHUNK = 2048


def row_chunked(fn, x: jax.Array, rows: int = ROW_CHUNK):
    """fn(x) for a pure, row-wise fn (each token's output depends on that token alone: linears, MLPs)
    on x [B, L, ...]; on CPU computed on ⌈L / rows⌉ equal slices of the L axis joined by one concatenate
    per output (fn may return a tuple of [B, L', ...] arrays, e.g. q, k, v).

    Same values (the slices are unrolled, not a loop, so the compiler's flop count stays right); the
    intermediates between fn's ops are a slice's, not the whole sequence's. Other platforms run fn
    whole (`lax.platform_dependent`): the TPU compiler tiles matmuls itself, and the slices would
    multiply the ops of the released programs it compiles.
    """
    L = x.shape[1]
    n = -(-L // rows)
    if n <= 1:
        return fn(x)
    size = -(-L // n)

    def sliced(x):
        parts = [fn(x[:, i:i + size]) for i in range(0, L, size)]
        return jax.tree.map(lambda *p: jnp.concatenate(p, axis=1), *parts)

    return jax.lax.platform_dependent(x, cpu=sliced, default=fn)


class DenseParams(nn.Module):
    """The parameters `linear` would create (kernel [in, out] Xavier-uniform, bias [out] zero, logical
    `axes`), returned instead of applied, for pure functions such as the slices of `row_chunked`."""

    features: int
    axes: tuple

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel_init, bias_init = _dense_inits(self.axes)
        kernel = self.param("kernel", kernel_init, (in_features, self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        return kernel, bias


def apply_dense(x: jax.Array, params: tuple[jax.Array, jax.Array], dtype: Dtype) -> jax.Array:
    """x [..., in] @ kernel + bias in `dtype`, the same ops as nn.Dense(dtype=dtype)."""
    kernel, bias = params
    x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def linear(
    features: int,
    axes: Sequence[str | None],
    name: str,
    dtype: Dtype = jnp.float32,
    zero_init: bool = False,
    kernel_init=None,
) -> nn.Dense:
    """nn.Dense (reference nn.Linear) with Xavier-uniform weights and zero bias by default.

    `axes` are the logical axis names of the kernel [in, out] ('embed', 'mlp', ...: the
    names `DEFAULT_RULES` in trellis_jax/training/sharding.py maps onto the mesh).
    """
    kernel_init, bias_init = _dense_inits(axes, zero_init, kernel_init)
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, bias_init=bias_init, name=name)


def _dense_inits(axes: Sequence[str | None], zero_init: bool = False, kernel_init=None):
    """(kernel, bias) initialisers of `linear` / `DenseParams`: Xavier-uniform (or zero, or `kernel_init`)
    kernel on logical `axes`, zero bias on the output axis."""
    if kernel_init is None:
        kernel_init = nn.initializers.zeros if zero_init else nn.initializers.xavier_uniform()
    return (nn.with_logical_partitioning(kernel_init, tuple(axes)),
            nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


class AffineLayerNorm(nn.Module):
    """LayerNorm with learnable scale/bias, computed in f32 and cast back (reference LayerNorm32)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,), jnp.float32)
        return layer_norm(x, self.eps, scale, bias)


class RMSNormPerHead(nn.Module):
    """The reference's QK norm: y = x / max(||x||, 1e-12) · gamma · sqrt(Dh), per head, in f32.

    x [..., H, Dh]; parameter gamma [H, Dh] (init 1).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, d = x.shape[-2:]
        gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.ones, ("norm", None)), (h, d), jnp.float32)
        x32 = x.astype(jnp.float32)
        # x / max(||x||, 1e-12), written so that an all-zero row (e.g. padding) has finite gradients:
        # d sqrt(s)/ds is infinite at s = 0, so clamp the squared norm before the root.
        inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x32), axis=-1, keepdims=True), 1e-24))
        y = x32 * inv_norm * gamma * jnp.sqrt(jnp.float32(d))
        return y.astype(x.dtype)
