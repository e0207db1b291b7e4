"""The composed two-stage TRELLIS sampler, one jitted function per batch of conditions.

    G_S (dense flow, 16³×8 noise) → SS decoder → occupancy logits > 0 → voxel coords packed into a
    static capacity (row-major (x, y, z) order, as argwhere) → G_L (sparse flow on those voxels)
    → de-normalise with the SLAT mean/std → decoder heads (Gaussians by default).

Stage 2 and the decoders run at the smallest *stage-2 size* (`stage2_sizes()`, the capacity divided
by 1, 2, 4 (`num_stage2_sizes`), at least `min_stage2_size`) that holds the largest occupied-voxel count of the batch,
chosen on device by `lax.switch`; their outputs are zero-padded back to the capacity. The sampled
occupancy thus decides the work: a 4 %-occupied 32³ grid runs its sparse flow on ~1.3K rows, not on
a padded capacity of 4K (full attention on padding costs quadratically). Each size is compiled once.

Every sample draws its noise from its own seed (stage-2 noise is drawn at the full capacity and cut
to the stage-2 size), so a sample does not depend on its batch position or on the batch size (up to
float rounding where two batches select different stage-2 sizes). Instead of seeds, the initial noise
can be given (`noise_ss` dense, `noise_slat` packed rows in the reference's order), which reproduces
a run of the PyTorch reference on the same noise. Capacity overflow and empty structures are
reported on the host (never silently truncated).

The pipeline is immutable: its jitted call is built on first use, and new settings make a new
pipeline (`with_samplers`, `dataclasses.replace`), which compiles its own.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.sampling.euler import SamplerConfig, sample_euler
from trellis_jax.slat_normalization import SLAT_MEAN, SLAT_STD
from trellis_jax.sparse.tensor import CapacityError, SparseTensor, masked

class EmptyStructureError(ValueError):
    """Stage 1 produced no occupied voxel for some sample."""


def occupancy_to_coords(occupied: jax.Array, capacity: int):
    """occupied bool [B, R, R, R] -> (coords int32 [B, capacity, 3], mask [B, capacity], counts [B]).

    Row-major (x, y, z) order like argwhere; rows beyond the capacity are dropped and counted, so the
    caller can report `counts > capacity`.
    """
    def one(occ):
        idx = jnp.nonzero(occ, size=capacity, fill_value=0)
        coords = jnp.stack(idx, -1).astype(jnp.int32)
        count = jnp.sum(occ, dtype=jnp.int32)
        mask = jnp.arange(capacity) < count
        return jnp.where(mask[:, None], coords, 0), mask, count

    return jax.vmap(one)(occupied)


def pad_rows(tree, rows: int, capacity: int):
    """Zero-pad axis 1 of every array leaf of `tree` from k·rows to k·capacity (k = leaf rows / rows:
    1 for per-voxel arrays, G for G Gaussians per voxel). Padding rows are zero / False, as the
    SparseTensor invariant wants."""
    def pad(a):
        if a.ndim < 2 or a.shape[1] % rows:
            raise ValueError(f"leaf of shape {a.shape} is not per-voxel over {rows} rows")
        k = a.shape[1] // rows
        return jnp.pad(a, [(0, 0), (0, k * (capacity - rows))] + [(0, 0)] * (a.ndim - 2))

    return tree if rows == capacity else jax.tree.map(pad, tree)


def stage2_size_index(sizes: Sequence[int], max_count: jax.Array) -> jax.Array:
    """Index of the smallest of the ascending `sizes` that holds `max_count` rows (the last one if none)."""
    return jnp.minimum(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), max_count, side="left"), len(sizes) - 1)


def seed_keys(seeds: jax.Array) -> jax.Array:
    """Per-sample PRNG keys from integer seeds [B]."""
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))


def unpack_rows(packed: jax.Array, counts: jax.Array, capacity: int) -> jax.Array:
    """Packed rows [P, C] (sample b's `counts[b]` rows contiguous, samples in order, as the reference's
    batched sparse tensors) -> per-sample rows [B, capacity, C]; rows past a sample's count are zero."""
    offsets = jnp.cumsum(counts) - counts
    rows = jnp.arange(capacity)
    idx = offsets[:, None] + rows[None, :]
    out = jnp.take(packed, idx, axis=0, mode="fill", fill_value=0)
    return jnp.where((rows[None, :] < counts[:, None])[..., None], out, 0)


def dense_velocity(module, params):
    """velocity_fn for a dense flow model (G_S): x [n, R, R, R, C], t [n] in [0, 1], cond [n, T, Cc]."""
    return lambda x, t, c: module.apply(params, x, t, c)


def sparse_velocity(module, params, coords: jax.Array, mask: jax.Array, resolution: int):
    """velocity_fn for a sparse flow model (G_L) on fixed voxels coords [B, L, 3] / mask [B, L]: the
    sampler passes x [n·B, L, C] (the batch tiled n times for CFG / multidiffusion)."""
    B = coords.shape[0]

    def vel(x, t, c):
        n = x.shape[0] // B
        st = SparseTensor(jnp.concatenate([coords] * n), x, jnp.concatenate([mask] * n), resolution)
        return module.apply(params, st, t, c).feats

    return vel


# pipeline.json decoder roles per output format
DECODER_ROLES = {"gaussian": "slat_decoder_gs", "radiance_field": "slat_decoder_rf", "mesh": "slat_decoder_mesh"}


@dataclasses.dataclass(frozen=True, eq=False)
class TrellisPipeline:
    """Networks (module, params) plus sampling settings (immutable: change settings with `with_samplers`).

    models: 'sparse_structure_flow_model', 'sparse_structure_decoder', 'slat_flow_model' and any of
    'slat_decoder_gs' / 'slat_decoder_rf' / 'slat_decoder_mesh' (the pipeline.json roles).
    """

    models: dict[str, tuple[Any, Any]]
    ss_sampler: SamplerConfig = SamplerConfig()
    slat_sampler: SamplerConfig = SamplerConfig()
    slat_mean: Sequence[float] = SLAT_MEAN
    slat_std: Sequence[float] = SLAT_STD
    capacity: int = 32768
    formats: tuple[str, ...] = ("gaussian",)
    # Stage 2 runs at the smallest of capacity/2^k (k < num_stage2_sizes, each >= min_stage2_size)
    # holding the batch's largest voxel count; 1 = always at the full capacity (one compile).
    num_stage2_sizes: int = 3
    min_stage2_size: int = 256

    @classmethod
    def from_checkpoint(cls, loaded: dict, capacity: int = 32768, formats=("gaussian",), **sampler_overrides) -> "TrellisPipeline":
        """From `trellis_jax.checkpoints.load_pipeline(...)`'s result (pipeline.json defaults merged
        with `ss_*` / `slat_*` overrides such as ss_steps=12, slat_cfg_strength=3.0)."""
        ss = {k[3:]: v for k, v in sampler_overrides.items() if k.startswith("ss_")}
        sl = {k[5:]: v for k, v in sampler_overrides.items() if k.startswith("slat_")}
        norm = loaded.get("slat_normalization") or {}
        return cls(
            models=loaded["models"],
            ss_sampler=SamplerConfig.from_params(loaded["sparse_structure_sampler"].get("params"), **ss),
            slat_sampler=SamplerConfig.from_params(loaded["slat_sampler"].get("params"), **sl),
            slat_mean=tuple(norm.get("mean", SLAT_MEAN)), slat_std=tuple(norm.get("std", SLAT_STD)),
            capacity=capacity, formats=tuple(formats),
        )

    def with_samplers(self, ss: Optional[SamplerConfig] = None, slat: Optional[SamplerConfig] = None, **changes) -> "TrellisPipeline":
        """A new pipeline with other sampler settings (or other fields, e.g. capacity=...); it compiles anew."""
        return dataclasses.replace(self, ss_sampler=ss or self.ss_sampler, slat_sampler=slat or self.slat_sampler, **changes)

    # ------------------------------------------------------------------ pieces (pure functions of params)
    def params(self) -> dict:
        return {k: p for k, (_, p) in self.models.items()}

    def _module(self, role):
        if role not in self.models:
            raise KeyError(f"pipeline has no '{role}' model (has {sorted(self.models)})")
        return self.models[role][0]

    def sample_structure(self, params, cond, neg_cond, keys, multi_image=False, noise=None):
        """Stage 1: [B] keys (or the given noise [B, 16, 16, 16, 8]) -> (ss_latent [B, 16, 16, 16, 8],
        occupancy logits [B, 64, 64, 64, 1])."""
        flow = self._module("sparse_structure_flow_model")
        shape = (flow.resolution,) * 3 + (flow.in_channels,)
        if noise is None:
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), shape))(keys)
        elif tuple(noise.shape[1:]) != shape:
            raise ValueError(f"stage-1 noise has shape {tuple(noise.shape)}, expected [B, {', '.join(map(str, shape))}] (channels last)")
        vel = dense_velocity(flow, params["sparse_structure_flow_model"])
        z = sample_euler(vel, noise, cond, neg_cond, self.ss_sampler, multi_image)
        logits = self._module("sparse_structure_decoder").apply(params["sparse_structure_decoder"], z)
        return z, logits

    def stage2_sizes(self) -> tuple[int, ...]:
        """Ascending row counts stage 2 may run at: capacity/2^k >= min_stage2_size, always incl. capacity."""
        sizes = {self.capacity}
        for k in range(1, max(self.num_stage2_sizes, 1)):
            if self.capacity % 2**k == 0 and self.capacity // 2**k >= self.min_stage2_size:
                sizes.add(self.capacity // 2**k)
        return tuple(sorted(sizes))

    def sample_latents(self, params, coords, mask, cond, neg_cond, keys, multi_image=False, resolution=64,
                       noise_rows=None, noise=None):
        """Stage 2 on given voxels: -> normalised latents [B, L, 8]. The noise is drawn as [noise_rows, 8]
        (default L) per sample and its first L rows used, so a sample's noise does not depend on L; or
        given as per-sample rows `noise` [B, >= L, 8] (row-aligned with `coords`)."""
        flow = self._module("slat_flow_model")
        B, L, _ = coords.shape
        if noise is None:
            rows = max(noise_rows or L, L)
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 2), (rows, flow.in_channels)))(keys)
        noise = masked(noise[:, :L].astype(jnp.float32), mask)
        vel = sparse_velocity(flow, params["slat_flow_model"], coords, mask, resolution)
        return masked(sample_euler(vel, noise, cond, neg_cond, self.slat_sampler, multi_image), mask)

    def decode(self, params, coords, mask, latents, resolution=64) -> dict:
        """De-normalised latents on voxels -> {'gaussian': Gaussians, 'radiance_field': Strivec, 'mesh': SparseTensor}."""
        z = SparseTensor(coords, masked(latents, mask), mask, resolution)
        out = {}
        for fmt in self.formats:
            if DECODER_ROLES[fmt] in self.models:
                out[fmt] = self._module(DECODER_ROLES[fmt]).apply(params[DECODER_ROLES[fmt]], z)
        return out

    def denormalize(self, latents, mask):
        mean, std = jnp.asarray(self.slat_mean), jnp.asarray(self.slat_std)
        return masked(latents * std + mean, mask)

    # ------------------------------------------------------------------ the composed, jitted sampler
    @functools.cached_property
    def _jitted(self):
        def run(params, cond, neg_cond, seeds, noise_ss, noise_slat, multi_image):
            keys = seed_keys(seeds)
            ss_latent, logits = self.sample_structure(params, cond, neg_cond, keys, multi_image, noise_ss)
            coords, mask, counts = occupancy_to_coords(logits[..., 0] > 0, self.capacity)
            res = logits.shape[1]
            slat_noise = None if noise_slat is None else unpack_rows(noise_slat, counts, self.capacity)

            def stage2(rows):  # G_L + decoders on the first `rows` rows (all valid rows when selected)
                def run_at(coords, mask):
                    c, m = coords[:, :rows], mask[:, :rows]
                    lat = self.sample_latents(params, c, m, cond, neg_cond, keys, multi_image, res, noise_rows=self.capacity,
                                              noise=slat_noise)
                    lat = self.denormalize(lat, m)
                    return pad_rows({"latents": lat, **self.decode(params, c, m, lat, res)}, rows, self.capacity)
                return run_at

            sizes = self.stage2_sizes()
            index = stage2_size_index(sizes, jnp.max(counts))
            out = jax.lax.switch(index, [stage2(r) for r in sizes], coords, mask)
            return {"ss_latent": ss_latent, "coords": coords, "mask": mask, "num_voxels": counts,
                    "stage2_rows": jnp.asarray(sizes, jnp.int32)[index], **out}

        return jax.jit(run, static_argnums=(6,))

    @property
    def jitted(self):
        """The composed sampler as one jitted function (params, cond, neg_cond, seeds, noise_ss, noise_slat,
        multi_image) -> dict (noise None = from seeds; multi_image static); `sample` calls it,
        `trellis_jax.aot` lowers it on abstract inputs."""
        return self._jitted

    def sample(self, cond, neg_cond, seeds=None, multi_image: bool = False, on_error: str = "raise", *,
               noise_ss=None, noise_slat=None) -> dict:
        """cond [B, Lc, Cc] (or [B, K, Lc, Cc] for multi-image), neg_cond [B or 1, Lc, Cc] or None, seeds [B].

        Initial noise comes from the per-sample seeds, or is given: `noise_ss` [B, R, R, R, C] (stage 1,
        channels last) and/or `noise_slat` [N, C] (stage 2: packed rows in the order of the sampled
        voxels, sample-major then x, y, z ascending, as the reference draws it; N must equal the total
        voxel count, else ValueError). A batch-1 `cond` or `neg_cond` is broadcast to the B samples.
        Returns a dict of device arrays (coords, mask, latents, num_voxels, decoded formats). Samples
        whose structure is empty or over capacity raise (`on_error='raise'`) or are flagged in
        out['ok'] (`on_error='flag'`).
        """
        B = next(int(np.shape(a)[0]) for a in (seeds, noise_ss, cond) if a is not None and np.ndim(a))
        seeds = np.zeros(B, np.int64) if seeds is None else np.atleast_1d(np.asarray(seeds))
        if seeds.shape[0] != B:
            raise ValueError(f"{B} samples but {seeds.shape[0]} seeds")
        cond = jnp.asarray(cond)
        if cond.shape[0] not in (1, B):
            raise ValueError(f"{cond.shape[0]} conditions for {B} samples")
        cond = jnp.broadcast_to(cond, (B,) + cond.shape[1:])
        if neg_cond is not None:
            neg_cond = jnp.asarray(neg_cond)
            neg_cond = jnp.broadcast_to(neg_cond, (B,) + neg_cond.shape[1:])
        if noise_ss is not None:
            noise_ss = jnp.asarray(noise_ss, jnp.float32)
        n_slat = None
        if noise_slat is not None:  # pad to a static row count so the call compiles once per batch size
            noise_slat = np.asarray(noise_slat, np.float32)
            n_slat = noise_slat.shape[0]
            noise_slat = jnp.asarray(np.pad(noise_slat, [(0, max(B * self.capacity - n_slat, 0)), (0, 0)]))
        out = self._jitted(self.params(), cond, neg_cond, jnp.asarray(seeds), noise_ss, noise_slat, bool(multi_image))
        counts = np.asarray(out["num_voxels"])
        if n_slat is not None and int(counts.sum()) != n_slat:
            raise ValueError(f"noise_slat has {n_slat} rows but the sampled structures have {int(counts.sum())} voxels "
                             f"({counts.tolist()} per sample)")
        over, empty = counts > self.capacity, counts == 0
        out["ok"] = ~(over | empty)
        if on_error == "raise":
            if over.any():
                raise CapacityError(f"samples {np.nonzero(over)[0].tolist()} have {counts[over].tolist()} occupied voxels, "
                                    f"more than the capacity {self.capacity}; raise `capacity`")
            if empty.any():
                raise EmptyStructureError(f"samples {np.nonzero(empty)[0].tolist()} produced an empty structure (no voxel with logit > 0)")
        return out
