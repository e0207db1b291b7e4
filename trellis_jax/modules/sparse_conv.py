"""Submanifold sparse convolution as a Flax module (reference `SparseConv3d`, spconv SubMConv3d)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.sparse.conv import submanifold_conv3d

Dtype = Any


class SparseConv3d(nn.Module):
    """feats [B, L, Cin] on voxels with neighbour map [B, L, k³] -> [B, L, Cout].

    Parameter `kernel` [k³, Cin, Cout] (offset index k²·r0 + k·r1 + r2) and `bias` [Cout]. Init
    matches PyTorch's conv default (kaiming-uniform, a=√5) unless `zero_init`.
    """

    features: int
    kernel_size: int = 3
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array, neighbors: jax.Array, mask: jax.Array) -> jax.Array:
        cin = feats.shape[-1]
        k3 = self.kernel_size**3
        fan_in = cin * k3
        bound = 1.0 / jnp.sqrt(fan_in)
        init = nn.initializers.zeros if self.zero_init else (lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("kernel_offsets", "conv_in", "conv_out")), (k3, cin, self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(init, ("conv_out",)), (self.features,), jnp.float32)
        if neighbors.shape[-1] != k3:
            raise ValueError(f"neighbour map has {neighbors.shape[-1]} offsets; a {self.kernel_size}³ conv needs {k3}")
        return submanifold_conv3d(feats.astype(self.dtype), neighbors, kernel.astype(self.dtype), bias.astype(self.dtype), mask)
