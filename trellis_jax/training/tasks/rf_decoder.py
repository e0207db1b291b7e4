"""RF-decoder task: frozen encoder (inside the step) -> latents -> Strivec radiance field -> volume render vs the GT view.

Loss (reference, encoder frozen): L_rec = L1 + 0.2·(1 − SSIM) [+ 0.2·LPIPS, left out: no VGG weights here,
said in `notes`] on one view per asset, background randomly black or white per render with the GT
composited on the same colour. Batch: coords int32 [B, L, 3], feats f32 [B, L, in_channels] (voxel features, encoded by the frozen
encoder inside the step), mask bool [B, L],
extrinsics [B, 4, 4], intrinsics [B, 3, 3], image [B, S, S, 3] (straight colour), alpha [B, S, S].
`render_overflow` (fraction of views whose rays exceeded cfg.render.sample_capacity) is logged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.losses.image import reconstruction_loss
from trellis_jax.render.radiance_field import render_radiance_field
from trellis_jax.training.tasks.decoder_base import DecoderTask, random_backgrounds


class RFDecoderTask(DecoderTask):
    stage = "rf_decoder"

    def loss(self, params, batch, rng, frozen=None):
        r = self.cfg.render
        field = self.decoder.apply(params, self.latents(batch, frozen))
        B = batch["image"].shape[0]
        bg = random_backgrounds(rng, B)
        render = jax.vmap(lambda f, E, K, b: render_radiance_field(
            f, E, K, b, height=self.image_size, width=self.image_size, sample_capacity=int(r.sample_capacity),
            ray_chunk=int(r.ray_chunk)))(field, batch["extrinsics"], batch["intrinsics"], bg)
        a = batch["alpha"][..., None]
        target = batch["image"] * a + bg[:, None, None, :] * (1 - a)
        w = self.cfg.loss
        rec, terms = reconstruction_loss(render.rgb, target, ssim_weight=float(w.ssim_weight))
        psnr = -10 * jnp.log10(jnp.mean(jnp.square(render.rgb - target)) + 1e-12)
        return rec, {**terms, "psnr": psnr, "render_overflow": jnp.mean(render.overflow.astype(jnp.float32))}
