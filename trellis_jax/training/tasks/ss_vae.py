"""SS-VAE task: occupancy [B, R, R, R, 1] -> encoder posterior -> decoder logits (R = 64; tiny: 32).

Loss (docs/reference_facts.md#losses): dice_weight·Dice(sigmoid(logits), occ) + bce_weight·BCE + kl_weight·KL
(reference: 1, 0, 1e-3). Grain data: stage 'ss_vae' (occupancy grids from the voxel coords).
"""
from __future__ import annotations

import jax
import numpy as np
import optax

from trellis_jax.losses.vae import dice_loss, kl_divergence
from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.training.tasks.base import Task, compute_dtype, encoder_decoder_models, np_rng


class SSVAETask(Task):
    stage = "ss_vae"

    def __init__(self, cfg):
        super().__init__(cfg)
        dt = compute_dtype(cfg)
        self.encoder = build_model(cfg.model.encoder.class_name, cfg.model.encoder.args.to_dict(), dtype=dt)
        self.decoder = build_model(cfg.model.decoder.class_name, cfg.model.decoder.args.to_dict(), dtype=dt)
        self.resolution = int(cfg.data.resolution)
        stride = 2 ** (len(self.encoder.channels) - 1)
        if self.resolution % stride:
            raise ValueError(f"data.resolution {self.resolution} must be divisible by the encoder's stride {stride}")

    def init_params(self, rng):
        k1, k2 = jax.random.split(rng)
        return {"encoder": self.encoder.init(k1, *dummy_inputs(self.encoder)),
                "decoder": self.decoder.init(k2, *dummy_inputs(self.decoder))}

    def export_models(self, params):
        return encoder_decoder_models(self.cfg.model, params)

    def loss(self, params, batch, rng, frozen=None):
        w = self.cfg.loss
        x = batch["occupancy"]
        z, mean, logvar = self.encoder.apply(params["encoder"], x, sample_posterior=True, rng=rng)
        logits = self.decoder.apply(params["decoder"], z).astype(jax.numpy.float32)
        dice = dice_loss(logits, x)
        bce = optax.sigmoid_binary_cross_entropy(logits, x).mean()
        kl = kl_divergence(mean.astype(jax.numpy.float32), logvar.astype(jax.numpy.float32))
        loss = float(w.dice_weight) * dice + float(w.bce_weight) * bce + float(w.kl_weight) * kl
        return loss, {"dice": dice, "bce": bce, "kl": kl}

    def synthetic_batch(self, batch_size, rng):
        """Surface shells (one voxel thick) of random ellipsoids: the kind of occupancy TRELLIS voxelises."""
        g = np_rng(rng)
        R = self.resolution
        c = (np.arange(R) + 0.5) / R - 0.5
        X, Y, Z = np.meshgrid(c, c, c, indexing="ij")
        occ = np.zeros((batch_size, R, R, R, 1), np.float32)
        for b in range(batch_size):
            centre = g.uniform(-0.1, 0.1, 3)
            radii = g.uniform(0.15, 0.4, 3)
            d = np.sqrt(((X - centre[0]) / radii[0]) ** 2 + ((Y - centre[1]) / radii[1]) ** 2 + ((Z - centre[2]) / radii[2]) ** 2)
            occ[b, ..., 0] = np.abs(d - 1) * radii.min() < 1.0 / R
        return {"occupancy": occ}

    def tokens_per_batch(self, batch):
        return int(batch["occupancy"].shape[0] * self.resolution**3)

    def grain_kwargs(self):
        return {"resolution": self.resolution}

    def prepare(self, batch):
        return {"occupancy": np.asarray(batch["occupancy"], np.float32)}
