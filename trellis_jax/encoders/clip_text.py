"""CLIP text tower (TRELLIS's text condition encoder, `openai/clip-vit-large-patch14`).

input_ids [B, 77] -> last_hidden_state [B, 77, 768] after the final LayerNorm; causal self-
attention, quick-GELU, no padding mask (all 77 tokens are used, as in the reference).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.encoders.vit_layers import EncoderLayer

Dtype = Any


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


CLIP_VIT_L14_TEXT = CLIPTextConfig()


class CLIPTextEncoder(nn.Module):
    config: CLIPTextConfig = CLIP_VIT_L14_TEXT
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        L = input_ids.shape[-1]
        if L > cfg.max_position_embeddings:
            raise ValueError(f"{L} tokens exceed the {cfg.max_position_embeddings} positions of CLIP's text tower")
        tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32, name="token_embedding")
        pos = self.param("position_embedding", nn.initializers.normal(0.01), (cfg.max_position_embeddings, cfg.hidden_size), jnp.float32)
        x = tok(input_ids) + pos[:L]
        for i in range(cfg.num_layers):
            x = EncoderLayer(
                cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps,
                causal=True, dtype=self.dtype, name=f"layer_{i}",
            )(x)
        return nn.LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.float32, name="final_layer_norm")(x).astype(jnp.float32)


def text_condition(model: CLIPTextEncoder, params, input_ids) -> jax.Array:
    """TRELLIS text condition: token ids [B, 77] -> last_hidden_state [B, 77, C] (f32).

    The negative condition is `text_condition(model, params, tokenizer([""]))`.
    """
    return model.apply(params, jnp.asarray(input_ids, jnp.int32))


def text_embeddings(model: CLIPTextEncoder, params, projection: jax.Array, input_ids) -> jax.Array:
    """CLIP's joint-space text embedding [B, P]: last_hidden_state at the end-of-text token (the highest
    id in CLIP's vocabulary, so its argmax) times `text_projection` [C, P] (not unit-normalised)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    hidden = model.apply(params, ids)
    pooled = jnp.take_along_axis(hidden, jnp.argmax(ids, -1)[:, None, None], axis=1)[:, 0]
    return pooled @ projection
