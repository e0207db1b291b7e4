"""SLat VAE encoder (reference `SLatEncoder`): averaged DINOv2 voxel features -> 8-d SLAT."""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.models.posterior import gaussian_posterior
from trellis_jax.models.slat_vae_trunk import SLatVAEBase
from trellis_jax.modules.layers import linear
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.tensor import SparseTensor, masked


class SLatEncoder(SLatVAEBase):
    """x: SparseTensor [B, L, in_channels] at 64³ -> (z, mean, logvar) SparseTensors [B, L, latent_channels]."""

    in_channels: int = dataclasses.field(kw_only=True)  # required; keyword-only after the base's defaults

    @nn.compact
    def __call__(self, x: SparseTensor, sample_posterior: bool = False, rng: Optional[jax.Array] = None):
        h = self.trunk(x)
        h = layer_norm(h.astype(jnp.float32), 1e-5)
        h = linear(2 * self.latent_channels, ("embed", "io"), "out_layer")(h)
        z, mean, logvar = gaussian_posterior(h, sample_posterior, rng)
        wrap = lambda f: x.replace(feats=masked(f, x.mask))
        return wrap(z), wrap(mean), wrap(logvar)
