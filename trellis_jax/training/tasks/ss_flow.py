"""G_S task: rectified flow on dense sparse-structure latents [B, R, R, R, 8] (R = 16; tiny: 8).

Batch: ss_latent float32 [B, R, R, R, C] (SS-VAE posterior means, unnormalised as the reference),
and the condition inputs (`cond` tokens [B, Lc, Cc], or `cond_image` / `input_ids` for the frozen
encoder inside the step; see `Condition`). Grain data: stage 'ss_flow' of an encoded latent dataset.
"""
from __future__ import annotations

import numpy as np

from trellis_jax.training.tasks.base import CODE_DIM, FlowTask, np_rng


class SSFlowTask(FlowTask):
    stage = "ss_flow"

    def __init__(self, cfg):
        super().__init__(cfg)
        r, c = self.resolution, self.channels
        g = np.random.default_rng(int(cfg.data.synthetic_seed))
        coarse = g.standard_normal((CODE_DIM, 4, 4, 4, c)).astype(np.float32)
        f = max(r // 4, 1)
        self._basis = coarse.repeat(f, 1).repeat(f, 2).repeat(f, 3)[:, :r, :r, :r] / np.sqrt(CODE_DIM)

    def loss(self, params, batch, rng, frozen=None):
        vel = lambda x, t, c: self.model.apply(params, x, t, c)
        return self.flow_loss(vel, batch["ss_latent"], batch, frozen, rng), {}

    def synthetic_batch(self, batch_size, rng):
        g = np_rng(rng)
        code = g.standard_normal((batch_size, CODE_DIM)).astype(np.float32)
        x0 = np.einsum("bk,kxyzc->bxyzc", code, self._basis) + 0.05 * g.standard_normal(
            (batch_size,) + self._basis.shape[1:]).astype(np.float32)
        return {"ss_latent": x0.astype(np.float32), **self.cond.synthetic(code)}

    def tokens_per_batch(self, batch):
        return int(batch["ss_latent"].shape[0] * self.resolution**3)

    def prepare(self, batch):
        x = np.asarray(batch["ss_latent"], np.float32)
        if x.shape[1:] != (self.resolution,) * 3 + (self.channels,):
            raise ValueError(f"dataset ss_latent has shape {x.shape[1:]}, the model expects "
                             f"{(self.resolution,) * 3 + (self.channels,)} (model.args.resolution/in_channels)")
        return {"ss_latent": x, **self.cond.host_inputs(batch)}
