"""G_L task: rectified flow on sparse structured latents padded to a static capacity.

Batch: coords int32 [B, L, 3], feats float32 [B, L, 8] (latents standardised per channel with
cfg.slat_normalization, docs/reference_facts.md#slat-normalisation), mask bool [B, L] (valid rows first), and the condition inputs (see `Condition`).
The loss is the MSE over the valid rows' features of the whole batch (pooled, as the reference).
Grain data: stage 'slat_flow' (make_loader standardises with the same mean/std; one bucket = L).
"""
from __future__ import annotations

import numpy as np

from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.training.tasks.base import CODE_DIM, FlowTask, np_rng


class SLatFlowTask(FlowTask):
    stage = "slat_flow"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.capacity = int(cfg.data.capacity)
        self.mean = np.asarray(cfg.slat_normalization.mean, np.float32)
        self.std = np.asarray(cfg.slat_normalization.std, np.float32)
        if self.mean.shape != (self.channels,) or self.std.shape != (self.channels,):
            raise ValueError(f"slat_normalization mean/std need {self.channels} entries (model.args.in_channels)")
        g = np.random.default_rng(int(cfg.data.synthetic_seed))
        self._code_basis = g.standard_normal((CODE_DIM, self.channels)).astype(np.float32) / np.sqrt(CODE_DIM)
        self._freq = g.uniform(0.1, 0.4, (3, self.channels)).astype(np.float32)

    def loss(self, params, batch, rng, frozen=None):
        coords, mask = batch["coords"], batch["mask"]
        vel = lambda x, t, c: self.model.apply(params, SparseTensor(coords, x, mask, self.resolution), t, c).feats
        loss = self.flow_loss(vel, batch["feats"], batch, frozen, rng, mask=mask)
        return loss, {}

    def synthetic_batch(self, batch_size, rng):
        """Random compact voxel sets (half to full capacity) with raw latents at the reference's scale
        (mean + std·pattern), standardised exactly as the data pipeline does."""
        g = np_rng(rng)
        L, C, R = self.capacity, self.channels, self.resolution
        side = min(R, int(np.ceil((2 * L) ** (1 / 3))) + 1)
        code = g.standard_normal((batch_size, CODE_DIM)).astype(np.float32)
        coords = np.zeros((batch_size, L, 3), np.int32)
        feats = np.zeros((batch_size, L, C), np.float32)
        mask = np.zeros((batch_size, L), bool)
        for b in range(batch_size):
            n = int(g.integers(L // 2, L + 1))
            flat = np.sort(g.choice(side**3, size=n, replace=False))
            xyz = np.stack(np.unravel_index(flat, (side,) * 3), -1) + g.integers(0, R - side + 1, size=3)
            pattern = code[b] @ self._code_basis + np.sin(xyz @ self._freq)
            raw = self.mean + self.std * pattern
            coords[b, :n], feats[b, :n], mask[b, :n] = xyz, (raw - self.mean) / self.std, True
        return {"coords": coords, "feats": feats, "mask": mask, **self.cond.synthetic(code)}

    def tokens_per_batch(self, batch):
        return int(np.sum(batch["mask"]))

    def grain_kwargs(self):
        return {**self.cond.grain_kwargs(), "buckets": (self.capacity,), "max_voxels": self.capacity,
                "resolution": self.resolution, "slat_normalization": (self.mean, self.std)}

    def prepare(self, batch):
        return {"coords": np.asarray(batch["coords"], np.int32), "feats": np.asarray(batch["feats"], np.float32),
                "mask": np.asarray(batch["mask"], bool), **self.cond.host_inputs(batch)}
