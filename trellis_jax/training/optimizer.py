"""Optimizer of the reference trainer: adaptive global-norm clipping -> AdamW, and the EMA
(docs/reference_facts.md#optimizer).

    tx = make_optimizer(cfg)              # optax.GradientTransformation, state is a pure pytree
    ema = ema_update(ema, params, decay)  # EMA of the fp32 master params

Adaptive clipping (reference `AdaptiveGradClipper`) keeps a ring buffer of the last `buffer_size` finite global grad norms in the
optimizer state (so it shards and checkpoints with it). Each step clips to the current threshold,
then records the step's norm (if finite): threshold = max_norm until the buffer is full, afterwards
min(max_norm, percentile(buffer, p)) — p = 95, buffer 1000, max_norm 1.0 in every released config.
The learning rate is constant (the reference) with an optional linear warm-up. Params stay float32
(master weights); bf16 compute is the model's `dtype` (config `compute_dtype`), not the optimizer's.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaptiveClipState(NamedTuple):
    norms: jax.Array      # float32 [buffer_size] ring buffer of finite grad norms
    ptr: jax.Array        # int32 next write position
    count: jax.Array      # int32 number of valid entries (<= buffer_size)
    threshold: jax.Array  # float32 threshold used for the last update (for logging)
    grad_norm: jax.Array  # float32 global norm of the last raw gradient (for logging)


def clip_threshold(state: AdaptiveClipState, max_norm: float, percentile: float) -> jax.Array:
    """Threshold for the next update: max_norm until the buffer is full, then min(max_norm, p-th percentile)."""
    full = state.count >= state.norms.shape[0]
    q = jnp.percentile(state.norms, percentile)  # linear interpolation, as torch.quantile
    return jnp.where(full, jnp.minimum(max_norm, q), max_norm).astype(jnp.float32)


def adaptive_clip(max_norm: float = 1.0, percentile: float = 95.0, buffer_size: int = 1000) -> optax.GradientTransformation:
    """Global-norm clipping with the reference's percentile-of-recent-norms threshold (see module doc)."""

    def init(params):
        del params
        z = jnp.zeros((), jnp.int32)
        return AdaptiveClipState(jnp.zeros((buffer_size,), jnp.float32), z, z, jnp.float32(max_norm), jnp.float32(0.0))

    def update(updates, state, params=None):
        del params
        norm = optax.global_norm(updates).astype(jnp.float32)
        thr = clip_threshold(state, max_norm, percentile)
        scale = jnp.minimum(1.0, thr / (norm + 1e-6))  # torch clip_grad_norm_'s coefficient
        updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
        finite = jnp.isfinite(norm)
        norms = jnp.where(finite, state.norms.at[state.ptr].set(norm), state.norms)
        ptr = jnp.where(finite, (state.ptr + 1) % buffer_size, state.ptr)
        count = jnp.where(finite, jnp.minimum(state.count + 1, buffer_size), state.count)
        return updates, AdaptiveClipState(norms, ptr.astype(jnp.int32), count.astype(jnp.int32), thr, norm)

    return optax.GradientTransformation(init, update)


class GlobalClipState(NamedTuple):
    threshold: jax.Array
    grad_norm: jax.Array


def global_clip(max_norm: float | None) -> optax.GradientTransformation:
    """Fixed global-norm clip (max_norm None: no clipping); records the norm for logging like adaptive_clip."""

    def init(params):
        return GlobalClipState(jnp.float32(max_norm if max_norm is not None else jnp.inf), jnp.float32(0.0))

    def update(updates, state, params=None):
        norm = optax.global_norm(updates).astype(jnp.float32)
        if max_norm is not None:
            scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
            updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
        return updates, GlobalClipState(state.threshold, norm)

    return optax.GradientTransformation(init, update)


def lr_schedule(cfg) -> optax.Schedule:
    """Constant lr (reference) with an optional linear warm-up over `warmup_steps`."""
    lr, warmup = float(cfg.optimizer.lr), int(cfg.optimizer.get("warmup_steps", 0) or 0)
    if warmup <= 0:
        return optax.constant_schedule(lr)
    return lambda count: lr * jnp.minimum(1.0, (count + 1) / warmup)


def _decay_mask(params):
    """Weight decay on everything but non-trainable buffers (G_S's fixed `pos_emb` table)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: "pos_emb" not in jax.tree_util.keystr(path), params)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """clip (cfg.optimizer.clip.kind: 'adaptive' | 'global' | 'none') -> AdamW(lr schedule, betas, eps, wd)."""
    o = cfg.optimizer
    c = o.clip
    if c.kind == "adaptive":
        clip = adaptive_clip(float(c.max_norm), float(c.percentile), int(c.buffer_size))
    elif c.kind == "global":
        clip = global_clip(float(c.max_norm))
    elif c.kind == "none":
        clip = global_clip(None)
    else:
        raise ValueError(f"config optimizer.clip.kind must be 'adaptive', 'global' or 'none', got {c.kind!r}")
    adamw = optax.adamw(lr_schedule(cfg), b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
                        weight_decay=float(o.weight_decay), mask=_decay_mask)
    return optax.chain(clip, adamw)


def clip_stats(opt_state) -> dict[str, jax.Array]:
    """{'grad_norm', 'clip_threshold'} of the last update, read from the clip's state."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, (AdaptiveClipState, GlobalClipState))):
        if isinstance(s, (AdaptiveClipState, GlobalClipState)):
            return {"grad_norm": s.grad_norm, "clip_threshold": s.threshold}
    raise ValueError("optimizer state has no clipping state")


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay·ema + (1 − decay)·params (float32), every step from step 0 (reference)."""
    return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)
