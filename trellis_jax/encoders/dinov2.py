"""DINOv2 ViT with register tokens (TRELLIS's image condition encoder, `dinov2_vitl14_reg`).

Token sequence: [CLS, registers×R, patches×N]; registers are inserted after the position
embedding is added (they carry none). `DINOv2` returns the last block's output *before* the final
norm (the reference's `x_prenorm`); `image_condition` then applies a parameter-free LayerNorm
(eps 1e-5) over channels — exactly what TRELLIS feeds its flow models: [B, 1374, 1024] at 518².
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.encoders.vit_layers import EncoderLayer
from trellis_jax.sparse.norm import layer_norm

Dtype = Any
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DINOv2Config:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    image_size: int = 518
    num_register_tokens: int = 4
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return 1 + self.num_register_tokens + self.grid**2


VITL14_REG = DINOv2Config()


class DINOv2(nn.Module):
    """pixels [B, S, S, 3] (ImageNet-normalised, S = image_size) -> x_prenorm [B, 1+R+N, C]."""

    config: DINOv2Config = VITL14_REG
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        B, Hh, Ww, _ = pixels.shape
        if Hh != cfg.image_size or Ww != cfg.image_size:
            raise ValueError(
                f"DINOv2 expects {cfg.image_size}x{cfg.image_size} images (its position table has no "
                f"interpolation here), got {Hh}x{Ww}; resize first (see `preprocess_images`)"
            )
        C, P, G = cfg.hidden_size, cfg.patch_size, cfg.grid
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, C), jnp.float32)
        registers = self.param("register_tokens", nn.initializers.zeros, (1, cfg.num_register_tokens, C), jnp.float32)
        pos = self.param("position_embeddings", init, (1, 1 + G * G, C), jnp.float32)
        patches = pixels.reshape(B, G, P, G, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, G * G, P * P * 3)
        x = nn.Dense(C, dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(patches.astype(self.dtype))
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (B, 1, C)).astype(x.dtype), x], axis=1)
        x = x + pos.astype(x.dtype)
        x = jnp.concatenate([x[:, :1], jnp.broadcast_to(registers, (B,) + registers.shape[1:]).astype(x.dtype), x[:, 1:]], axis=1)
        for i in range(cfg.num_layers):
            x = EncoderLayer(
                C, cfg.num_heads, int(C * cfg.mlp_ratio), cfg.hidden_act, cfg.layer_norm_eps,
                layer_scale=True, dtype=self.dtype, name=f"layer_{i}",
            )(x)
        # The model's own final norm (`layernorm`) is kept for completeness but TRELLIS uses x_prenorm.
        nn.LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.float32, name="layernorm")(x[:, :1])
        return x


def normalize_images(images: jax.Array) -> jax.Array:
    """RGB [..., 3] in [0, 1] -> ImageNet-normalised."""
    return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def image_condition(model: DINOv2, params, images: jax.Array) -> jax.Array:
    """TRELLIS image condition: images [B, S, S, 3] in [0, 1] (alpha-premultiplied RGB)
    -> parameter-free LayerNorm(x_prenorm) [B, 1+R+N, C] (f32)."""
    tokens = model.apply(params, normalize_images(images.astype(jnp.float32)))
    return layer_norm(tokens.astype(jnp.float32), 1e-5)


def patch_tokens(model: DINOv2, params, images: jax.Array) -> jax.Array:
    """Patch part of x_prenorm (no norm), for voxel feature projection: [B, G, G, C]."""
    cfg = model.config
    tokens = model.apply(params, normalize_images(images.astype(jnp.float32)))
    return tokens[:, 1 + cfg.num_register_tokens :].reshape(images.shape[0], cfg.grid, cfg.grid, cfg.hidden_size)
