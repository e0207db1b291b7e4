"""SLat VAE encoder (reference `SLatEncoder`): averaged DINOv2 voxel features -> 8-d SLAT."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.models.slat_vae_trunk import sparse_transformer_trunk
from trellis_jax.modules.layers import linear
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.tensor import SparseTensor, masked

Dtype = Any


class SLatEncoder(nn.Module):
    """x: SparseTensor [B, L, in_channels] at 64³ -> (z, mean, logvar) SparseTensors [B, L, latent_channels]."""

    resolution: int
    in_channels: int
    model_channels: int
    latent_channels: int
    num_blocks: int
    num_heads: Optional[int] = None
    num_head_channels: Optional[int] = 64
    mlp_ratio: float = 4
    attn_mode: str = "swin"
    window_size: int = 8
    pe_mode: str = "ape"
    use_fp16: bool = False
    use_checkpoint: bool = False
    qk_rms_norm: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    remat: bool = False

    @nn.compact
    def __call__(self, x: SparseTensor, sample_posterior: bool = False, rng: Optional[jax.Array] = None):
        h = sparse_transformer_trunk(self, x)
        h = layer_norm(h.astype(jnp.float32), 1e-5)
        h = linear(2 * self.latent_channels, ("embed", "io"), "out_layer")(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        if sample_posterior:
            if rng is None:
                raise ValueError("sample_posterior=True needs an explicit rng key")
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        else:
            z = mean
        wrap = lambda f: x.replace(feats=masked(f, x.mask))
        return wrap(z), wrap(mean), wrap(logvar)
