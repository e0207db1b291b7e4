"""Diagonal-Gaussian posterior of the VAE encoders (SS and SLat): the head's channels split into mean
and log-variance, and the reparameterised sample drawn from them."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def gaussian_posterior(h: jax.Array, sample: bool, rng: Optional[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """h [..., 2C] -> (z, mean, logvar), each [..., C]: z = mean + exp(logvar/2)·ε when `sample`
    (which needs an explicit key), else the mean (as the reference's latent extraction)."""
    mean, logvar = jnp.split(h, 2, axis=-1)
    if not sample:
        return mean, mean, logvar
    if rng is None:
        raise ValueError("sample_posterior=True needs an explicit rng key")
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype), mean, logvar
