"""What the frozen-encoder decoder stages (rf_decoder, mesh_decoder) share.

The frozen SLat encoder (`frozen_encoder`) turns each asset's voxel features into latents inside the
train step (its params are the step's non-trained `frozen` argument, under stop_gradient); the
trainable decoder comes from cfg.model.decoder; synthetic batches are textured ellipsoids
(`synthetic_assets`) with one GT view each: coords int32 [B, L, 3], feats f32 [B, L, in_channels],
mask bool [B, L] and the view. Subclasses implement `loss`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.training.tasks.base import Task, compute_dtype, np_rng
from trellis_jax.training.tasks.frozen_encoder import FrozenEncoder
from trellis_jax.training.tasks.synthetic_assets import asset_batch, feature_basis


def random_backgrounds(rng, batch_size: int) -> jax.Array:
    """[B, 3]: each render's background, black or white with probability ½ (the reference's 'random')."""
    return jnp.where(jax.random.bernoulli(rng, 0.5, (batch_size, 1)), 1.0, 0.0) * jnp.ones((batch_size, 3))


class DecoderTask(Task):
    """What the two frozen-encoder decoder stages share: the frozen encoder (run inside the step), the
    trainable decoder from cfg.model.decoder, and synthetic assets (voxel features + one view)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder = FrozenEncoder(cfg)
        dec = cfg.model.decoder
        self.decoder = build_model(dec.class_name, dec.args.to_dict(), dtype=compute_dtype(cfg))
        self.resolution = int(self.decoder.resolution)
        if self.encoder.resolution != self.resolution or self.encoder.latent_channels != int(self.decoder.latent_channels):
            raise ValueError(f"frozen encoder (resolution {self.encoder.resolution}, {self.encoder.latent_channels} latent "
                             f"channels) does not match the decoder ({self.resolution}, {self.decoder.latent_channels})")
        self.capacity, self.image_size = int(cfg.data.capacity), int(cfg.render.image_size)
        self._basis = feature_basis(int(cfg.data.synthetic_seed), self.encoder.in_channels)
        self.notes = [self.encoder.note, "LPIPS term left out (no VGG weights): L_rec = L1 + 0.2·(1 − SSIM)"]

    def init_params(self, rng):
        return self.decoder.init(rng, *dummy_inputs(self.decoder))

    def export_models(self, params):
        d = self.cfg.model.decoder
        return {d.checkpoint: (d.class_name, d.args.to_dict(), params)}

    def frozen_shapes(self):
        return self.encoder.shapes()

    def frozen_params(self):
        return self.encoder.params()

    def latents(self, batch, frozen) -> SparseTensor:
        """The batch's SLat [B, L, latent_channels]: the frozen encoder of its voxel features (traced)."""
        coords, mask = batch["coords"], batch["mask"]
        return SparseTensor(coords, self.encoder.encode(frozen, coords, batch["feats"], mask), mask, self.resolution)

    def synthetic_batch(self, batch_size, rng):
        return asset_batch(np_rng(rng), batch_size, self.resolution, self.capacity, self._basis, self.image_size)

    def tokens_per_batch(self, batch):
        return int(np.sum(batch["mask"]))

    def grain_kwargs(self):
        d = self.cfg.data
        return {"buckets": (self.capacity,), "max_voxels": self.capacity, "resolution": self.resolution,
                "render_size": self.image_size, "views_per_asset": int(d.get("views_per_asset", 1))}

    def prepare(self, batch):
        """A grain batch (views [B, K, ...], K = data.views_per_asset) -> the step's batch with one view per
        row: B·K rows, each asset's coords/feats/mask repeated for its K views (keys as `synthetic_batch`)."""
        k = batch["image"].shape[1]
        out = {"coords": np.asarray(batch["coords"], np.int32), "feats": np.asarray(batch["feats"], np.float32),
               "mask": np.asarray(batch["mask"], bool)}
        if out["feats"].shape[-1] != self.encoder.in_channels:
            raise ValueError(f"the dataset's voxel features have {out['feats'].shape[-1]} channels, "
                             f"model.encoder.args.in_channels is {self.encoder.in_channels}")
        out = {name: np.repeat(v, k, axis=0) for name, v in out.items()}
        for name in ("image", "alpha", "extrinsics", "intrinsics", "depth", "normal"):
            if name in batch:
                v = np.asarray(batch[name], np.float32)
                out[name] = v.reshape((-1,) + v.shape[2:])
        return out
