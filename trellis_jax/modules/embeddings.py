"""Timestep embedding (reference `TimestepEmbedder`): sinusoid of 1000·t, then a 2-layer MLP."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.layers import linear

Dtype = Any

FREQUENCY_CHANNELS = 256


def timestep_sinusoid(tau: jax.Array, channels: int = FREQUENCY_CHANNELS, max_period: float = 10000.0) -> jax.Array:
    """tau [B] (already 1000·t) -> [B, channels] = [cos(τ f_k), sin(τ f_k)], f_k = exp(−ln(P)·k/half)."""
    half = channels // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = tau.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if channels % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """tau [B] -> [B, C]: Linear(256, C) -> SiLU -> Linear(C, C); weights N(0, 0.02) at init."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tau: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)
        h = timestep_sinusoid(tau)
        h = linear(self.channels, ("io", "embed"), "mlp_0", jnp.float32, kernel_init=init)(h)
        h = nn.silu(h)
        return linear(self.channels, ("embed", "embed"), "mlp_2", jnp.float32, kernel_init=init)(h)



