"""Editing: detail variation (keep the structure, resample stage 2) and region editing (RePaint).

Region editing follows RePaint (Lugmayr et al., 2022) on the rectified-flow path. Inside an
axis-aligned voxel box the content is generated; outside it the known data are re-noised to the
current time with the forward process and pasted back after every step. RePaint's resampling
schedule (`jump_length`, `num_resamples`: after every `jump_length` denoising steps, go back up
`jump_length` steps with fresh noise, `num_resamples − 1` times) harmonises the two regions. The
paper's exact TRELLIS settings are unpublished (docs/reference_facts.md#editing), so both are parameters.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.sampling.euler import SamplerConfig, guided_steps, noise_to, renoise, timesteps
from trellis_jax.sampling.pipeline import TrellisPipeline, occupancy_to_coords, seed_keys
from trellis_jax.sparse.neighbors import linear_key
from trellis_jax.sparse.tensor import SparseTensor, masked


@dataclasses.dataclass(frozen=True)
class RePaintConfig:
    jump_length: int = 1
    num_resamples: int = 1  # 1 = plain replacement, no resampling


def repaint_schedule(steps: int, cfg: RePaintConfig) -> list[tuple[int, int]]:
    """Sequence of (from_index, to_index) moves on the step grid 0..steps (0 = t'=1 noise).

    Down moves (i -> i+1) denoise; up moves (i -> i-1) re-noise. Every index is finally reached going down.
    """
    moves, i = [], 0
    while i < steps:
        block = min(cfg.jump_length, steps - i)
        for r in range(cfg.num_resamples):
            for k in range(block):
                moves.append((i + k, i + k + 1))
            if r < cfg.num_resamples - 1:
                for k in range(block, 0, -1):
                    moves.append((i + k, i + k - 1))
        i += block
    return moves


def box_mask(coords: jax.Array, lo, hi) -> jax.Array:
    """coords [..., 3] inside the half-open box [lo, hi) (per-axis voxel indices) -> bool [...]."""
    lo, hi = jnp.asarray(lo), jnp.asarray(hi)
    return jnp.all((coords >= lo) & (coords < hi), axis=-1)


def repaint(velocity_fn, x_known, known_mask, cond, neg_cond, cfg: SamplerConfig, rp: RePaintConfig, key):
    """RePaint sampling of x [B, ...]: entries where known_mask (broadcastable) is True follow x_known."""
    ts = timesteps(cfg.steps, cfg.rescale_t)
    guided = guided_steps(cfg) if neg_cond is not None else np.zeros(cfg.steps, bool)
    moves = repaint_schedule(cfg.steps, rp)
    frm = np.array([a for a, _ in moves])
    to = np.array([b for _, b in moves])
    B = x_known.shape[0]
    w = jnp.float32(cfg.cfg_strength)

    def velocity(x, i):
        t = jnp.full((B,), jnp.asarray(ts, jnp.float32)[i])
        if neg_cond is None:
            return velocity_fn(x, t, cond)

        def g(x):
            v = velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, neg_cond]))
            return (1 + w) * v[:B] - w * v[B:]

        return jax.lax.cond(jnp.asarray(guided)[i], g, lambda x: velocity_fn(x, t, cond), x)

    def move(x, inp):
        a, b, k = inp
        t_a, t_b = jnp.asarray(ts, jnp.float32)[a], jnp.asarray(ts, jnp.float32)[b]
        k1, k2 = jax.random.split(k)

        def down(x):
            x = x - (t_a - t_b) * velocity(x, a)
            known_t = noise_to(x_known, jnp.full((B,), t_b), jax.random.normal(k1, x.shape))
            return jnp.where(known_mask, known_t, x)

        def up(x):
            return renoise(x, jnp.full((B,), t_a), jnp.full((B,), t_b), jax.random.normal(k2, x.shape))

        return jax.lax.cond(b > a, down, up, x), None

    k0, kmoves = jax.random.split(key)
    x = jnp.where(known_mask, noise_to(x_known, jnp.ones((B,)), jax.random.normal(k0, x_known.shape)), jax.random.normal(k0, x_known.shape))
    x, _ = jax.lax.scan(move, x, (jnp.asarray(frm), jnp.asarray(to), jax.random.split(kmoves, len(moves))))
    return jnp.where(known_mask, x_known, x)


@dataclasses.dataclass(frozen=True, eq=False)
class Editor:
    """Editing operations on a `TrellisPipeline` (batched). Both the editor and the pipeline are
    immutable, so each operation is one jitted function built on first use (`functools.cached_property`,
    as `TrellisPipeline.jitted`); it compiles once per input shapes and `resolution` (static).
    Keep one Editor per pipeline: another one compiles its own."""

    pipe: TrellisPipeline
    rp: RePaintConfig = RePaintConfig()

    def variation(self, coords, mask, cond, neg_cond, seeds, resolution: int = 64) -> dict:
        """Detail variation: keep the structure (coords [B, L, 3], mask [B, L]); resample stage 2 under `cond`."""
        return self._variation(self.pipe.params(), coords, mask, cond, neg_cond, jnp.asarray(np.atleast_1d(seeds)), resolution)

    @functools.cached_property
    def _variation(self):
        p = self.pipe

        def variation(params, coords, mask, cond, neg_cond, seeds, resolution):
            keys = seed_keys(seeds)
            lat = p.denormalize(p.sample_latents(params, coords, mask, cond, neg_cond, keys, False, resolution), mask)
            return {"coords": coords, "mask": mask, "latents": lat, **p.decode(params, coords, mask, lat, resolution)}

        return jax.jit(variation, static_argnums=(6,))

    def edit_region(self, ss_latent, coords, mask, latents, box_lo, box_hi, cond, neg_cond, seeds, resolution: int = 64) -> dict:
        """Regenerate the voxels inside the box [box_lo, box_hi) (64³ voxel indices) under `cond`.

        Stage 1 repaints the dense structure latent inside the box (scaled to 16³); the new occupancy
        keeps the old voxels outside the box. Stage 2 repaints latents: voxels outside the box that
        existed before keep their (de-normalised) latents; the rest are generated.
        """
        box = jnp.asarray(np.stack([np.asarray(box_lo), np.asarray(box_hi)]), jnp.int32)
        return self._edit_region(self.pipe.params(), ss_latent, coords, mask, latents, box, cond, neg_cond,
                                 jnp.asarray(np.atleast_1d(seeds)), resolution)

    @functools.cached_property
    def _edit_region(self):
        p = self.pipe
        flow_s = p.module("sparse_structure_flow_model")
        dec = p.module("sparse_structure_decoder")
        flow_l = p.module("slat_flow_model")
        r = flow_s.resolution

        def edit_region(params, ss_latent, coords, mask, latents, box, cond, neg_cond, seeds, resolution):
            box_lo, box_hi = box[0], box[1]
            scale = resolution // r
            keys = seed_keys(seeds)
            B = ss_latent.shape[0]
            grid = jnp.stack(jnp.meshgrid(*(jnp.arange(r),) * 3, indexing="ij"), -1)
            lo_c = box_lo // scale
            hi_c = -(-box_hi // scale)
            inside_c = box_mask(grid, lo_c, hi_c)[None, ..., None]
            vel_s = lambda x, t, c: flow_s.apply(params["sparse_structure_flow_model"], x, t, c)
            z = repaint(vel_s, ss_latent, ~inside_c, cond, neg_cond, p.ss_sampler, self.rp, keys[0])
            logits = dec.apply(params["sparse_structure_decoder"], z)
            # keep the old structure outside the box exactly
            old_occ = jnp.zeros(logits.shape[:4], bool)
            old_occ = jax.vmap(lambda o, c, m: o.at[c[:, 0], c[:, 1], c[:, 2]].max(m))(old_occ, coords, mask)
            g64 = jnp.stack(jnp.meshgrid(*(jnp.arange(logits.shape[1]),) * 3, indexing="ij"), -1)
            inside = box_mask(g64, box_lo, box_hi)[None]
            occ = jnp.where(inside, logits[..., 0] > 0, old_occ)
            new_coords, new_mask, counts = occupancy_to_coords(occ, coords.shape[1])
            # known latents: new voxels outside the box that existed before
            norm = (latents - jnp.asarray(p.slat_mean)) / jnp.asarray(p.slat_std)

            def lookup(c_new, m_new, c_old, m_old, lat):
                keys_old = jnp.where(m_old, linear_key(c_old), jnp.iinfo(jnp.int32).max)
                order = jnp.argsort(keys_old)
                pos = jnp.clip(jnp.searchsorted(keys_old[order], linear_key(c_new)), 0, keys_old.shape[0] - 1)
                found = (keys_old[order][pos] == linear_key(c_new)) & m_new
                return found, lat[order][pos]

            found, known_lat = jax.vmap(lookup)(new_coords, new_mask, coords, mask, norm)
            known = found & ~box_mask(new_coords, box_lo, box_hi)

            def vel_l(x, t, c):
                n = x.shape[0] // B
                st = SparseTensor(jnp.concatenate([new_coords] * n), x, jnp.concatenate([new_mask] * n), resolution)
                return flow_l.apply(params["slat_flow_model"], st, t, c).feats

            lat = repaint(vel_l, masked(known_lat, new_mask), known[..., None], cond, neg_cond, p.slat_sampler, self.rp, keys[-1])
            lat = p.denormalize(masked(lat, new_mask), new_mask)
            return {"ss_latent": z, "coords": new_coords, "mask": new_mask, "num_voxels": counts, "latents": lat,
                    "known": known, **p.decode(params, new_coords, new_mask, lat, resolution)}

        return jax.jit(edit_region, static_argnums=(9,))
