"""The frozen SLat encoder of the decoder-only stages (RF and mesh decoders train on its latents).

cfg.model.encoder is a model config ({class_name, args}); cfg.model.encoder_checkpoint names an official
checkpoint (`dir/ckpts/NAME` prefix, as `checkpoints.load_model` takes) holding trained weights. With no
checkpoint the encoder is randomly initialised from cfg.seed and `note` says so: latents from it carry
no pretrained meaning (fine for tests and smoke runs, not for a real decoder).

    enc = FrozenEncoder(cfg)
    frozen = enc.params()                        # (or enc.shapes(): ShapeDtypeStructs, nothing computed)
    latents = enc.encode(frozen, coords [B, L, 3], feats [B, L, in_channels], mask [B, L])  # [B, L, latent]

It runs inside the jitted train step, as the flow tasks' condition encoders do: its params are the step's
non-trained argument (`Task.frozen_params`, never in the state, optimiser or checkpoint) and `encode`
applies it under stop_gradient. The latent is the posterior mean, as the reference's stored latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.models.slat_encoder import SLatEncoder
from trellis_jax.sparse.tensor import SparseTensor


class FrozenEncoder:
    def __init__(self, cfg):
        path = str(cfg.model.get("encoder_checkpoint", "") or "")
        self._loaded = None
        if path:
            from trellis_jax.checkpoints.official import load_model

            self.module, self._loaded = load_model(path)
            if not isinstance(self.module, SLatEncoder):
                raise ValueError(f"{path}: model.encoder_checkpoint must hold a SLatEncoder, got {type(self.module).__name__}")
            self.note = f"frozen SLat encoder loaded from {path}, inside the train step"
        else:
            enc = cfg.model.encoder
            self.module = build_model(enc.class_name, enc.args.to_dict())
            self.note = ("WARNING: no model.encoder_checkpoint given: the frozen SLat encoder is RANDOMLY INITIALISED "
                         "(seed-derived); its latents carry no pretrained meaning")
        self._key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 0x5E1C)
        self.resolution = int(self.module.resolution)
        self.in_channels = int(self.module.in_channels)
        self.latent_channels = int(self.module.latent_channels)

    def _random_init(self):
        return nn.meta.unbox(self.module.init(self._key, *dummy_inputs(self.module)))

    def shapes(self):
        """ShapeDtypeStructs of the encoder params (nothing loaded or computed)."""
        if self._loaded is not None:
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self._loaded)
        return jax.eval_shape(self._random_init)

    def params(self):
        """The encoder params: the checkpoint's, else a random init from cfg.seed."""
        return self._loaded if self._loaded is not None else jax.jit(self._random_init)()

    def encode(self, frozen, coords: jax.Array, feats: jax.Array, mask: jax.Array) -> jax.Array:
        """Posterior-mean latents [B, L, latent_channels] (traced; no gradient reaches the encoder)."""
        st = SparseTensor(coords, feats.astype(jax.numpy.float32), mask, self.resolution)
        return jax.lax.stop_gradient(self.module.apply(frozen, st)[1].feats)
