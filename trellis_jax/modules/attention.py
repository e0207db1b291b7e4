"""Multi-head self- and cross-attention modules (reference `MultiHeadAttention`, dense and sparse).

Self-attention over tokens x [B, L, C]: `layout=None` is dense full attention (every token valid);
an `AttentionLayout` restricts attention to groups (per-sample full or 3D windows) of padded voxel
tokens. Dense self-attention and every cross-attention go through `sparse.attention.cross_attention`,
which runs a chunk of queries at a time where the [B, H, L, Lk] logits would be large (G_S's 4096²
self-attention, cross-attention to 1374 image tokens) and one fused product where they are small
(77 text tokens), which XLA schedules better than a loop. Key layout: `to_qkv` (q|k|v blocks, head-major), `to_q`, `to_kv` (k|v), `to_out`,
optional `q_rms_norm` / `k_rms_norm`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.layers import DenseParams, RMSNormPerHead, apply_dense, linear, row_chunked
from trellis_jax.sparse.attention import AttentionLayout, cross_attention, sorted_self_attention, take_rows

Dtype = Any


class SelfAttention(nn.Module):
    channels: int
    num_heads: int
    qk_rms_norm: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, layout: AttentionLayout | None = None) -> jax.Array:
        """x [B, L, C] -> [B, L, C]. A window layout permutes x into window order once and the output
        back once (the projections are row-wise), rather than gathering q, k, v and the result."""
        B, L, _ = x.shape
        H = self.num_heads
        Dh = self.channels // H
        to_qkv = DenseParams(3 * self.channels, ("embed", "qkv"), name="to_qkv")(x.shape[-1])
        to_out = DenseParams(self.channels, ("qkv", "embed"), name="to_out")(self.channels)
        permuted = layout is not None and layout.kind != "full"
        if permuted:
            x = take_rows(x, layout.perm)
        # q, k and v leave the slices separately: no [B, L, 3C] buffer beside them
        split = lambda qkv: tuple(qkv.reshape(qkv.shape[:2] + (3, H, Dh))[:, :, j] for j in range(3))
        q, k, v = row_chunked(lambda t: split(apply_dense(t, to_qkv, self.dtype)), x)
        if self.qk_rms_norm:
            q = RMSNormPerHead(name="q_rms_norm")(q)
            k = RMSNormPerHead(name="k_rms_norm")(k)
        if layout is None:
            out = cross_attention(q, k, v)  # dense: all tokens attend to all
        else:
            out = sorted_self_attention(q, k, v, layout, impl=self.attn_impl)
        out = row_chunked(lambda t: apply_dense(t, to_out, self.dtype), out.reshape(B, L, self.channels))
        return take_rows(out, layout.inv_perm) if permuted else out


class CrossAttention(nn.Module):
    channels: int
    ctx_channels: int
    num_heads: int
    qk_rms_norm: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """x [B, L, C] queries, context [B, Lc, Cc] -> [B, L, C]."""
        B, L, _ = x.shape
        Lc = context.shape[1]
        H = self.num_heads
        Dh = self.channels // H
        q = linear(self.channels, ("embed", "qkv"), "to_q", self.dtype)(x).reshape(B, L, H, Dh)
        kv = linear(2 * self.channels, ("cond", "qkv"), "to_kv", self.dtype)(context).reshape(B, Lc, 2, H, Dh)
        k, v = kv[:, :, 0], kv[:, :, 1]
        if self.qk_rms_norm:
            q = RMSNormPerHead(name="q_rms_norm")(q)
            k = RMSNormPerHead(name="k_rms_norm")(k)
        out = cross_attention(q, k, v).reshape(B, L, self.channels)
        return linear(self.channels, ("qkv", "embed"), "to_out", self.dtype)(out)
