"""The feature networks behind the metrics: LPIPS (VGG16), DINOv2 (FD / KD) and CLIP (CLIP score).

Each loads real weights from a local path given in the eval config; without one a frozen random network
of a small architecture stands in, and `random_networks` lists it so the run can say loudly that the
corresponding figures are meaningless. Every network's forward is jitted once per `Extractors`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.encoders import clip_image as ci
from trellis_jax.encoders.clip_text import CLIPTextEncoder, text_embeddings
from trellis_jax.eval import metrics
from trellis_jax.losses import lpips as lp


def _random(module, example, seed: int):
    return nn.meta.unbox(module.init(jax.random.PRNGKey(seed), example))


@dataclasses.dataclass
class Extractors:
    lpips_params: Any                      # None: LPIPS not computed
    dinov2: Any                            # trellis_jax.conditioning.ImageConditioner (None: generation not run)
    clip_model: Optional[ci.CLIPVisionEncoder]
    clip_params: Any
    clip_text: Optional[tuple]             # (CLIPTextEncoder, params, projection [C, P]) or None
    random_networks: list[str]

    @functools.cached_property
    def _lpips(self):
        return jax.jit(lambda p, a, b: metrics.lpips(p, a, b))

    def lpips(self, a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
        """Images [V, H, W, 3] in [0, 1] -> LPIPS [V], or None without LPIPS weights."""
        if self.lpips_params is None:
            return None
        return np.asarray(self._lpips(self.lpips_params, jnp.asarray(a), jnp.asarray(b)))

    @functools.cached_property
    def _dino(self):
        model = self.dinov2.model
        size = model.config.image_size

        def cls(params, images):
            x = jax.image.resize(images, (images.shape[0], size, size, 3), "bicubic", antialias=True)
            tokens = model.apply(params, (jnp.clip(x, 0, 1) - jnp.asarray((0.485, 0.456, 0.406))) / jnp.asarray((0.229, 0.224, 0.225)))
            ln = params["params"]["layernorm"]
            c = tokens[:, 0].astype(jnp.float32)
            mu = c.mean(-1, keepdims=True)
            var = jnp.square(c - mu).mean(-1, keepdims=True)
            return (c - mu) / jnp.sqrt(var + model.config.layer_norm_eps) * ln["scale"] + ln["bias"]

        return jax.jit(cls)

    def dinov2_features(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] in [0, 1] -> DINOv2 class tokens after the final norm [N, C] (FD_dinov2's features)."""
        return np.asarray(self._dino(self.dinov2.params, jnp.asarray(images, jnp.float32)))

    @functools.cached_property
    def _clip_image(self):
        return jax.jit(lambda p, x: ci.image_embeddings(self.clip_model, p, x))

    def clip_image(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] in [0, 1] -> CLIP image embeddings [N, P]."""
        return np.asarray(self._clip_image(self.clip_params, jnp.asarray(images, jnp.float32)))

    @functools.cached_property
    def _clip_text(self):
        return jax.jit(lambda p, w, ids: text_embeddings(self.clip_text[0], p, w, ids))

    def clip_texts(self, input_ids: np.ndarray) -> Optional[np.ndarray]:
        """Token ids [N, 77] -> CLIP text embeddings [N, P], or None without a text tower."""
        if self.clip_text is None:
            return None
        _, params, proj = self.clip_text
        return np.asarray(self._clip_text(params, proj, jnp.asarray(input_ids)))


def load_extractors(cfg, log=print, lpips: bool = True, generation: bool = True, need_text: bool = False) -> Extractors:
    """Networks of `cfg.networks` (lpips_backbone, lpips_linear, dinov2, clip: local paths or empty) that
    the tasks need: LPIPS for reconstruction, DINOv2 + CLIP (with its text tower for text prompts) for generation."""
    from trellis_jax.conditioning import load_image_conditioner

    n = cfg.networks
    rand = []
    lpips_params = None
    if lpips and n.lpips_backbone:
        lpips_params = lp.load_lpips(n.lpips_backbone, n.lpips_linear or "")
    elif lpips:
        log("LPIPS: no VGG16 backbone given (networks.lpips_backbone): LPIPS columns are left empty")
    if not generation:
        return Extractors(lpips_params, None, None, None, None, rand)
    dino = load_image_conditioner(n.dinov2 or None, "vitl14_reg" if n.dinov2 else "tiny", seed=cfg.seed)
    if not dino.pretrained:
        rand.append("DINOv2 (FD/KD)")
    clip_text = None
    if n.clip:
        from trellis_jax.encoders.hf_weights import load_clip_image, load_clip_text, load_clip_text_projection

        clip_model, clip_params = load_clip_image(n.clip)
        if need_text:
            tm, tp = load_clip_text(n.clip)
            clip_text = (tm, tp, load_clip_text_projection(n.clip))
    else:
        rand.append("CLIP (CLIP score)")
        clip_model = ci.CLIPVisionEncoder(ci.TINY_CLIP_VISION)
        s = ci.TINY_CLIP_VISION.image_size
        clip_params = _random(clip_model, jnp.zeros((1, s, s, 3)), cfg.seed)
        if need_text:
            from trellis_jax.conditioning import TINY_CLIP

            tm = CLIPTextEncoder(TINY_CLIP)
            tp = _random(tm, jnp.zeros((1, 77), jnp.int32), cfg.seed + 1)
            proj = 0.1 * jax.random.normal(jax.random.PRNGKey(cfg.seed + 2), (TINY_CLIP.hidden_size, ci.TINY_CLIP_VISION.projection_dim))
            clip_text = (tm, tp, proj)
    return Extractors(lpips_params, dino, clip_model, clip_params, clip_text, rand)
