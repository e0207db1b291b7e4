"""The reference's 3D sinusoidal absolute position embedding (`AbsolutePositionEmbedder`)."""
from __future__ import annotations

import jax.numpy as jnp


def absolute_position_embedding(coords, channels: int, dtype=jnp.float32):
    """coords [..., 3] (integer voxel indices) -> [..., channels].

    F = ⌊C/3/2⌋ frequencies ω_k = 10000^(-k/F); per axis (x, y, z) [sin(c·ω), cos(c·ω)], the three
    blocks concatenated and zero-padded at the end to C channels.
    """
    num_freqs = channels // 3 // 2
    freqs = 1.0 / (10000.0 ** (jnp.arange(num_freqs, dtype=jnp.float32) / num_freqs))
    c = coords.astype(jnp.float32)
    angles = c[..., :, None] * freqs  # [..., 3, F]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., 3, 2F]
    emb = emb.reshape(coords.shape[:-1] + (3 * 2 * num_freqs,))
    pad = channels - emb.shape[-1]
    if pad:
        emb = jnp.concatenate([emb, jnp.zeros(emb.shape[:-1] + (pad,), emb.dtype)], axis=-1)
    return emb.astype(dtype)
