"""SLat -> radiance field decoder (reference `SLatRadianceFieldDecoder`, CP rank 16, 8 samples/axis).

Head channels per voxel: trivec [R, 3, D] (+1 after decoding), density [R], features_dc [R, 1, 3].
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from trellis_jax.models.slat_vae_trunk import SLatVAEBase
from trellis_jax.modules.layers import linear
from trellis_jax.representations.strivec import Strivec
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.tensor import SparseTensor


class SLatRadianceFieldDecoder(SLatVAEBase):
    """z: SparseTensor [B, L, latent_channels] -> Strivec fields on the same voxels."""

    representation_config: Optional[dict] = None

    @nn.compact
    def __call__(self, z: SparseTensor) -> Strivec:
        rep = {"rank": 16, "dim": 8}
        rep.update(dict(self.representation_config or {}))
        R, D = rep["rank"], rep["dim"]
        h = self.trunk(z)
        h = layer_norm(h.astype(jnp.float32), 1e-5)
        raw = linear(R * 3 * D + R + R * 3, ("embed", "io"), "out_layer", zero_init=True)(h)
        B, L, _ = raw.shape
        trivec = raw[..., : R * 3 * D].reshape(B, L, R, 3, D) + 1.0
        density = raw[..., R * 3 * D : R * 3 * D + R]
        features_dc = raw[..., R * 3 * D + R :].reshape(B, L, R, 1, 3)
        position = (z.coords.astype(jnp.float32) + 0.5) / z.resolution
        return Strivec(position, trivec, density, features_dc, z.mask, z.resolution)
