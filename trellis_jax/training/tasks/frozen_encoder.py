"""The frozen SLat encoder of the decoder-only stages (RF and mesh decoders train on its latents).

cfg.model.encoder is a model config ({class_name, args}); cfg.model.encoder_checkpoint names an official
checkpoint (`dir/ckpts/NAME` prefix, as `checkpoints.load_model` takes) holding trained weights. With no
checkpoint the encoder is randomly initialised from cfg.seed and `note` says so: latents from it carry
no pretrained meaning (fine for tests and smoke runs, not for a real decoder).

    enc = FrozenEncoder(cfg)
    latents = enc(coords [B, L, 3], feats [B, L, in_channels], mask [B, L])   # numpy [B, L, latent_channels]

It runs host-side, outside the train step (no gradient, nothing in the optimiser), jitted once; the
latent is the posterior mean, as the reference's stored latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.models.slat_encoder import SLatEncoder
from trellis_jax.sparse.tensor import SparseTensor


class FrozenEncoder:
    def __init__(self, cfg):
        path = str(cfg.model.get("encoder_checkpoint", "") or "")
        if path:
            from trellis_jax.checkpoints.official import load_model

            self.module, self.params = load_model(path)
            if not isinstance(self.module, SLatEncoder):
                raise ValueError(f"{path}: model.encoder_checkpoint must hold a SLatEncoder, got {type(self.module).__name__}")
            self.note = f"frozen SLat encoder loaded from {path}"
        else:
            enc = cfg.model.encoder
            self.module = build_model(enc.class_name, enc.args.to_dict())
            key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 0x5E1C)
            self.params = nn.meta.unbox(self.module.init(key, *dummy_inputs(self.module)))
            self.note = ("WARNING: no model.encoder_checkpoint given: the frozen SLat encoder is RANDOMLY INITIALISED "
                         "(seed-derived); its latents carry no pretrained meaning")
        self.resolution = int(self.module.resolution)
        self.in_channels = int(self.module.in_channels)
        self.latent_channels = int(self.module.latent_channels)
        module = self.module
        self._encode = jax.jit(lambda p, c, f, m: module.apply(p, SparseTensor(c, f, m, module.resolution))[1].feats)

    def __call__(self, coords, feats, mask) -> np.ndarray:
        return np.asarray(self._encode(self.params, jnp.asarray(coords, jnp.int32), jnp.asarray(feats, jnp.float32),
                                       jnp.asarray(mask, bool)), np.float32)

