"""Pre-norm ViT encoder layer shared by DINOv2 and CLIP's text tower (HF naming inside)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.sparse.attention import dense_attention

Dtype = Any

ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


class EncoderLayer(nn.Module):
    """x + [ls1·] attn(LN1(x)); x + [ls2·] mlp(LN2(x)). Submodules: q/k/v/o_proj, norm1/2, fc1/2.

    `layer_scale` adds DINOv2's per-channel LayerScale (`ls1`, `ls2`); `causal` gives CLIP's mask.
    """

    hidden_size: int
    num_heads: int
    mlp_hidden: int
    activation: str = "gelu"
    eps: float = 1e-6
    layer_scale: bool = False
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        B, L, C = x.shape
        H = self.num_heads
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        norm = lambda name: nn.LayerNorm(self.eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
        h = norm("norm1")(x).astype(self.dtype)
        q, k, v = (dense(C, n)(h).reshape(B, L, H, C // H) for n in ("q_proj", "k_proj", "v_proj"))
        a = dense_attention(q, k, v, causal=self.causal)
        a = dense(C, "o_proj")(a.reshape(B, L, C))
        if self.layer_scale:
            a = a * self.param("ls1", nn.initializers.ones, (C,), jnp.float32).astype(a.dtype)
        x = x + a.astype(x.dtype)
        h = norm("norm2")(x).astype(self.dtype)
        h = dense(C, "fc2")(ACTIVATIONS[self.activation](dense(self.mlp_hidden, "fc1")(h)))
        if self.layer_scale:
            h = h * self.param("ls2", nn.initializers.ones, (C,), jnp.float32).astype(h.dtype)
        return x + h.astype(x.dtype)
