"""CLIP image tower with its projection to the joint image–text space (HF `CLIPVisionModelWithProjection`).

pixels [B, S, S, 3] (CLIP-normalised, S = image_size) -> image_embeds [B, P]:
patch embedding (no bias) + class token + position table -> `pre_layrnorm` -> pre-norm ViT layers
(quick-GELU) -> `post_layernorm` of the class token -> `visual_projection` (no bias). Used for the
CLIP score of generated assets (100 · cosine with the prompt's text or image embedding).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.encoders.vit_layers import EncoderLayer

Dtype = Any
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


CLIP_VIT_L14_VISION = CLIPVisionConfig()  # openai/clip-vit-large-patch14
TINY_CLIP_VISION = CLIPVisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, patch_size=14,
                                    image_size=56, projection_dim=32)


class CLIPVisionEncoder(nn.Module):
    """pixels [B, S, S, 3] (CLIP-normalised) -> image_embeds [B, projection_dim] (f32, not unit-normalised)."""

    config: CLIPVisionConfig = CLIP_VIT_L14_VISION
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        B, H, W, _ = pixels.shape
        if H != cfg.image_size or W != cfg.image_size:
            raise ValueError(f"CLIP's image tower expects {cfg.image_size}x{cfg.image_size} images, got {H}x{W}; use `preprocess`")
        C, P, G = cfg.hidden_size, cfg.patch_size, cfg.grid
        init = nn.initializers.normal(0.02)
        cls = self.param("class_embedding", init, (C,), jnp.float32)
        pos = self.param("position_embedding", init, (1 + G * G, C), jnp.float32)
        patches = pixels.reshape(B, G, P, G, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, G * G, P * P * 3)
        x = nn.Dense(C, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(patches.astype(self.dtype))
        x = jnp.concatenate([jnp.broadcast_to(cls, (B, 1, C)).astype(x.dtype), x], axis=1) + pos.astype(x.dtype)
        x = nn.LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.float32, name="pre_layrnorm")(x)
        for i in range(cfg.num_layers):
            x = EncoderLayer(C, cfg.num_heads, cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps,
                             dtype=self.dtype, name=f"layer_{i}")(x)
        pooled = nn.LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.float32, name="post_layernorm")(x[:, 0])
        return nn.Dense(cfg.projection_dim, use_bias=False, param_dtype=jnp.float32, name="visual_projection")(pooled.astype(jnp.float32))


def preprocess(images: jax.Array, image_size: int) -> jax.Array:
    """RGB [B, H, W, 3] in [0, 1] (square) -> CLIP-normalised [B, S, S, 3] (bicubic resize, antialiased)."""
    B = images.shape[0]
    x = jax.image.resize(images.astype(jnp.float32), (B, image_size, image_size, 3), "bicubic", antialias=True)
    return (jnp.clip(x, 0.0, 1.0) - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def image_embeddings(model: CLIPVisionEncoder, params, images: jax.Array) -> jax.Array:
    """RGB images [B, H, W, 3] in [0, 1] -> CLIP image embeddings [B, P]."""
    return model.apply(params, preprocess(images, model.config.image_size))
