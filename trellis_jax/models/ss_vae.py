"""Sparse-structure VAE (reference `SparseStructureEncoder` / `SparseStructureDecoder`).

Dense 3D conv nets, channels-last here: 64³×1 occupancy <-> 16³×8 latent. ResBlock3d = norm, SiLU,
conv3, norm, SiLU, conv3 (zero-init) + skip; norms are channel LayerNorms (affine, eps 1e-5, f32).
Downsampling is a k2 s2 conv; upsampling a conv to 8·C' channels followed by a 3D pixel shuffle.
Module names mirror the official keys (`input_layer`, `blocks_i`, `blocks_i/conv`, `middle_block_i`,
`out_layer_0` (norm), `out_layer_2` (conv)).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.models.posterior import gaussian_posterior
from trellis_jax.modules.dense_conv import Conv3d
from trellis_jax.modules.layers import AffineLayerNorm

Dtype = Any

def pixel_shuffle_3d(x: jax.Array, factor: int = 2) -> jax.Array:
    """[B, X, Y, Z, C'·f³] -> [B, fX, fY, fZ, C']: channel c'·f³ + i·f² + j·f + k -> voxel (fX+i, fY+j, fZ+k)."""
    B, X, Y, Z, C = x.shape
    c = C // factor**3
    x = x.reshape(B, X, Y, Z, c, factor, factor, factor).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, X * factor, Y * factor, Z * factor, c)


class ResBlock3d(nn.Module):
    channels: int
    out_channels: Optional[int] = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.out_channels or self.channels
        h = nn.silu(AffineLayerNorm(1e-5, name="norm1")(x))
        h = Conv3d(out, 3, dtype=self.dtype, name="conv1")(h)
        h = nn.silu(AffineLayerNorm(1e-5, name="norm2")(h))
        h = Conv3d(out, 3, zero_init=True, dtype=self.dtype, name="conv2")(h)
        skip = x if out == self.channels else Conv3d(out, 1, dtype=self.dtype, name="skip_connection")(x)
        return h + skip


class _Resample(nn.Module):
    """Down: conv k2 s2. Up: conv k3 to 8·C' + pixel shuffle. Key `blocks.i.conv`."""

    out_channels: int
    up: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.up:
            return pixel_shuffle_3d(Conv3d(self.out_channels * 8, 3, dtype=self.dtype, name="conv")(x), 2)
        return Conv3d(self.out_channels, 2, stride=2, dtype=self.dtype, name="conv")(x)


class SparseStructureEncoder(nn.Module):
    """x [B, 64, 64, 64, Cin] -> (z, mean, logvar), each [B, 16, 16, 16, latent_channels]."""

    in_channels: int
    latent_channels: int
    num_res_blocks: int
    channels: Sequence[int]
    num_res_blocks_middle: int = 2
    norm_type: str = "layer"
    use_fp16: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, sample_posterior: bool = False, rng: Optional[jax.Array] = None):
        if self.norm_type != "layer":
            raise NotImplementedError("released SS VAEs use norm_type='layer'")
        chs = list(self.channels)
        h = Conv3d(chs[0], 3, name="input_layer")(x.astype(jnp.float32)).astype(self.dtype)
        i = 0
        for level, ch in enumerate(chs):
            for _ in range(self.num_res_blocks):
                h = ResBlock3d(ch, ch, self.dtype, name=f"blocks_{i}")(h)
                i += 1
            if level < len(chs) - 1:
                h = _Resample(chs[level + 1], up=False, dtype=self.dtype, name=f"blocks_{i}")(h)
                i += 1
        for j in range(self.num_res_blocks_middle):
            h = ResBlock3d(chs[-1], chs[-1], self.dtype, name=f"middle_block_{j}")(h)
        h = nn.silu(AffineLayerNorm(1e-5, name="out_layer_0")(h.astype(jnp.float32)))
        h = Conv3d(2 * self.latent_channels, 3, name="out_layer_2")(h)
        return gaussian_posterior(h, sample_posterior, rng)


class SparseStructureDecoder(nn.Module):
    """z [B, 16, 16, 16, latent_channels] -> occupancy logits [B, 64, 64, 64, out_channels]."""

    out_channels: int
    latent_channels: int
    num_res_blocks: int
    channels: Sequence[int]
    num_res_blocks_middle: int = 2
    norm_type: str = "layer"
    use_fp16: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        if self.norm_type != "layer":
            raise NotImplementedError("released SS VAEs use norm_type='layer'")
        chs = list(self.channels)
        h = Conv3d(chs[0], 3, name="input_layer")(z.astype(jnp.float32)).astype(self.dtype)
        for j in range(self.num_res_blocks_middle):
            h = ResBlock3d(chs[0], chs[0], self.dtype, name=f"middle_block_{j}")(h)
        i = 0
        for level, ch in enumerate(chs):
            for _ in range(self.num_res_blocks):
                h = ResBlock3d(ch, ch, self.dtype, name=f"blocks_{i}")(h)
                i += 1
            if level < len(chs) - 1:
                h = _Resample(chs[level + 1], up=True, dtype=self.dtype, name=f"blocks_{i}")(h)
                i += 1
        h = nn.silu(AffineLayerNorm(1e-5, name="out_layer_0")(h.astype(jnp.float32)))
        return Conv3d(self.out_channels, 3, name="out_layer_2")(h)
