"""KL and Gaussian-decoder regularisers of the reference's VAE training (docs/reference_facts.md#losses)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def kl_divergence(mean: jax.Array, logvar: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """0.5·mean(μ² + e^{logvar} − logvar − 1) over all latent elements (valid voxels only if masked).

    mean/logvar [B, ..., C]; mask [B, L] for sparse latents [B, L, C].
    """
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - logvar - 1)
    if mask is None:
        return jnp.mean(kl)
    w = mask.astype(kl.dtype)[..., None]
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w) * kl.shape[-1], 1.0)


def gaussian_regularizers(scaling: jax.Array, opacity: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Volume term mean(Π_axes scale) and opacity term mean((1 − opacity)²) over valid Gaussians.

    scaling [B, N, 3], opacity [B, N] (activated), valid [B, N]. The reference weights them 1e4 and 1e-3.
    """
    w = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    return {
        "volume": jnp.sum(jnp.prod(scaling, axis=-1) * w) / n,
        "opacity": jnp.sum(jnp.square(1 - opacity) * w) / n,
    }


def dice_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """SS-VAE occupancy loss: 1 − (2Σ(p·y) + 1)/(Σp + Σy + 1) over the whole batch, p = sigmoid(logits)."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    y = target.astype(jnp.float32)
    return 1 - (2 * jnp.sum(p * y) + 1) / (jnp.sum(p) + jnp.sum(y) + 1)
