"""Rectified-flow training objective of both generation stages; the only one in the codebase
(docs/reference_facts.md#flow-objective).

x_t = (1 − t)·x0 + (σmin + (1 − σmin)·t)·ε,  target v = (1 − σmin)·ε − x0,  t = sigmoid(n), n ~ N(1, 1);
plain MSE over every element (sparse: over all valid voxel features of the batch, pooled).
Condition dropout (p = 0.1) swaps a sample's condition for the negative one to enable CFG.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SIGMA_MIN = 1e-5


def sample_t(rng, batch: int, mean: float = 1.0, std: float = 1.0) -> jax.Array:
    """logitNormal(mean, std) timesteps [B] in (0, 1)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))


def interpolate(x0, eps, t):
    """(x_t, target velocity) for data x0 [B, ...], noise eps, t [B]."""
    tb = t.reshape(t.shape + (1,) * (x0.ndim - 1))
    x_t = (1 - tb) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * tb) * eps
    return x_t, (1 - SIGMA_MIN) * eps - x0


def drop_condition(rng, cond, neg_cond, p: float = 0.1):
    """Replace each sample's condition cond [B, Lc, Cc] by the negative condition (broadcastable to it)
    with probability p (independently per sample)."""
    keep = jax.random.bernoulli(rng, 1 - p, (cond.shape[0],))
    return jnp.where(keep.reshape((-1,) + (1,) * (cond.ndim - 1)), cond, jnp.broadcast_to(neg_cond, cond.shape))


def flow_loss(velocity_fn, x0, cond, neg_cond, rng, mask=None, p_uncond: float = 0.1, t_mean=1.0, t_std=1.0):
    """MSE between velocity_fn(x_t, t, cond) and the target velocity.

    x0 [B, ...] dense, or [B, L, C] sparse with mask [B, L] (padding rows excluded: mean over the valid
    rows' features of the whole batch, pooled). Returns the scalar loss."""
    k_t, k_eps, k_drop = jax.random.split(rng, 3)
    t = sample_t(k_t, x0.shape[0], t_mean, t_std)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t, target = interpolate(x0, eps, t)
    if mask is not None:
        x_t = jnp.where(mask[..., None], x_t, 0.0)
    c = drop_condition(k_drop, cond, neg_cond, p_uncond) if p_uncond > 0 else cond
    err = jnp.square(velocity_fn(x_t, t, c).astype(jnp.float32) - target)
    if mask is None:
        return jnp.mean(err)
    w = mask.astype(jnp.float32)[..., None]
    return jnp.sum(err * w) / jnp.maximum(jnp.sum(w) * x0.shape[-1], 1.0)
