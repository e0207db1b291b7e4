"""Dense channels-last 3D convolution (the SS VAE's `nn.Conv3d`), lowered per platform.

XLA CPU runs a 3-D convolution well only when both channel counts are large: at the SS decoder's
shapes a 3×3×3 conv on 64³×32 runs at ~0.14 of a same-process f32 matmul's rate and one on
32³×128 at ~0.45 (`benchmarks/dense_conv.py`). Written as k 2-D convolutions over (y, z), one per
kernel x-offset with the x axis folded into the batch, each output shifted along x and summed, and
at most `SLAB_OUT_CHANNELS` output channels per 2-D convolution, the same convs run at 0.6–1.0 of
it. That form is what CPU lowers to; every other platform (TPU) lowers the plain 3-D convolution.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Output channels per 2-D convolution of the CPU form: 512 -> 1024 at 16³ ran at ~0.56 of matmul in
# one 2-D convolution and ~0.96 in four of 256 (and 256 is no slower than 128 at the other shapes).
SLAB_OUT_CHANNELS = 256


def _conv3d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride,) * 3, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _conv3d_slabs(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' conv, odd kernel: Σ_a shift_x(conv2d_yz(x, kernel[a]), a − k//2)."""
    B, X, Y, Z, C = x.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    p = k // 2
    if cout > SLAB_OUT_CHANNELS:
        # Slicing output channels below copies the kernel. Tie the copies to x, or XLA hoists every
        # conv's copies to the program start, where they all stay live at once (+260 MiB in the SS decoder).
        x, kernel = jax.lax.optimization_barrier((x, kernel))
    flat = x.reshape(B * X, Y, Z, C)

    def conv2d(w):  # [B·X, Y, Z, C] -> [B, X, Y, Z, cout']
        y = jax.lax.conv_general_dilated(flat, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(B, X, Y, Z, -1)

    def add_shifted(acc, y, d):  # acc[:, x] += y[:, x + d] where 0 <= x + d < X, written over acc in place
        if abs(d) >= X:
            return acc
        lo = max(0, -d)
        part = jax.lax.slice_in_dim(acc, lo, lo + X - abs(d), axis=1) + jax.lax.slice_in_dim(y, lo + d, lo + d + X - abs(d), axis=1)
        return jax.lax.dynamic_update_slice_in_dim(acc, part, lo, axis=1)

    def chunk(w):  # w [k, k, k, C, cout'] -> out[:, x] = Σ_a y_a[:, x + a − p]
        nonlocal flat
        acc = conv2d(w[p])
        for a in (a for a in range(k) if a != p):
            # each term is added before the next 2-D conv starts: one conv output live at a time
            acc, flat = jax.lax.optimization_barrier((acc, flat))
            acc = add_shifted(acc, conv2d(w[a]), a - p)
        return acc

    if cout <= SLAB_OUT_CHANNELS:
        out = chunk(kernel)
    else:
        out = jnp.concatenate([chunk(kernel[..., i : i + SLAB_OUT_CHANNELS]) for i in range(0, cout, SLAB_OUT_CHANNELS)], axis=-1)
    # the sum materialised once: fused into its consumers, XLA would keep its terms alive instead
    return jax.lax.optimization_barrier(out)


def conv3d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """x [B, X, Y, Z, Cin], kernel [k, k, k, Cin, Cout] -> [B, X', Y', Z', Cout].

    stride 1: 'SAME' padding (odd k). stride s > 1: 'VALID' (the k2 s2 downsampling).
    """
    k = kernel.shape[0]
    if stride != 1:
        return _conv3d_xla(x, kernel, stride, "VALID")
    if k % 2 == 0:
        raise ValueError(f"a stride-1 'SAME' conv3d needs an odd kernel, got {k}")
    return jax.lax.platform_dependent(
        x, kernel, cpu=_conv3d_slabs, default=lambda x, w: _conv3d_xla(x, w, 1, "SAME"))


class Conv3d(nn.Module):
    """`conv3d` with a bias: params `kernel` [k, k, k, Cin, Cout] and `bias` [Cout] in f32 (the layout
    and names of `nn.Conv`), computed in `dtype`."""

    features: int
    kernel_size: int
    stride: int = 1
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # PyTorch's Conv default (kaiming-uniform, a = √5) is uniform(±1/√fan_in).
        init = nn.initializers.zeros if self.zero_init else nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        k = self.kernel_size
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("kernel_offsets", None, None, "conv_in", "conv_out")),
                            (k, k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (self.features,), jnp.float32)
        return conv3d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride) + bias.astype(self.dtype)
