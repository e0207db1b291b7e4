"""Transformer blocks: plain pre-norm (SLat VAE trunk) and AdaLN-modulated cross blocks (flows).

Both act on tokens x [B, L, C]; `layout` selects dense (None) or sparse grouped self-attention.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.attention import CrossAttention, SelfAttention
from trellis_jax.modules.layers import AffineLayerNorm, DenseParams, apply_dense, linear, row_chunked
from trellis_jax.sparse.attention import AttentionLayout, full_layout, row_extent
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.tensor import masked

Dtype = Any


class FeedForward(nn.Module):
    """Linear(C, ratio·C) -> GELU(tanh) -> Linear(ratio·C, C) on x [B, L, C], `row_chunked`; keys `mlp.0`, `mlp.2`."""

    channels: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = int(self.channels * self.mlp_ratio)
        fc1 = DenseParams(hidden, ("embed", "mlp"), name="mlp_0")(x.shape[-1])
        fc2 = DenseParams(self.channels, ("mlp", "embed"), name="mlp_2")(hidden)
        return row_chunked(lambda t: apply_dense(nn.gelu(apply_dense(t, fc1, self.dtype), approximate=True), fc2, self.dtype), x)


class TransformerBlock(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x)); LNs without affine, eps 1e-6 (reference SparseTransformerBlock)."""

    channels: int
    num_heads: int
    mlp_ratio: float = 4.0
    qk_rms_norm: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, layout: AttentionLayout | None = None) -> jax.Array:
        h = layer_norm(x, 1e-6)
        x = x + SelfAttention(self.channels, self.num_heads, self.qk_rms_norm, self.dtype, self.attn_impl, name="attn")(h, layout)
        h = layer_norm(x, 1e-6)
        return x + FeedForward(self.channels, self.mlp_ratio, self.dtype, name="mlp")(h)


class ModulatedTransformerCrossBlock(nn.Module):
    """AdaLN-gated self-attention, unmodulated affine-normed cross-attention, AdaLN-gated MLP.

    emb [B, C] (or [B, 6C] with share_mod) gives (shift, scale, gate) for attention then MLP.
    """

    channels: int
    ctx_channels: int
    num_heads: int
    mlp_ratio: float = 4.0
    qk_rms_norm: bool = False
    qk_rms_norm_cross: bool = False
    share_mod: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, context: jax.Array, layout: AttentionLayout | None = None) -> jax.Array:
        C = self.channels
        if self.share_mod:
            mod = emb
        else:
            mod = linear(6 * C, ("embed", "mlp"), "adaLN_modulation_1", self.dtype, zero_init=True)(nn.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod.astype(x.dtype)[:, None, :], 6, axis=-1)
        h = layer_norm(x, 1e-6) * (1 + scale_msa) + shift_msa
        h = SelfAttention(C, self.num_heads, self.qk_rms_norm, self.dtype, self.attn_impl, name="self_attn")(h, layout)
        x = x + gate_msa * h
        h = AffineLayerNorm(1e-6, name="norm2")(x)
        x = x + CrossAttention(C, self.ctx_channels, self.num_heads, self.qk_rms_norm_cross, self.dtype, name="cross_attn")(h, context)
        h = layer_norm(x, 1e-6) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * FeedForward(C, self.mlp_ratio, self.dtype, name="mlp")(h)


# Name of the scanned block stack's parameters: `blocks/...` with a leading [num_blocks] axis (logical
# axis `layers`), against `blocks_{i}/...` when unrolled. trellis_jax/checkpoints/keymap.py converts.
SCANNED_BLOCKS = "blocks"


def cross_block_stack(
    h: jax.Array, emb: jax.Array, context: jax.Array, layout: AttentionLayout | None, mask: jax.Array | None, *,
    num_blocks: int, block_args: tuple, scan: bool = False, remat: bool = False, remat_policy: str = "nothing_saveable",
    prefix_fraction: int = 1,
) -> jax.Array:
    """`num_blocks` ModulatedTransformerCrossBlock(*block_args) applied to tokens h [B, L, C] (padding rows
    re-zeroed after each block when `mask` [B, L] is given). Call from inside a compact method: the blocks
    become the caller's children.

    scan=False: a Python loop, params `blocks_{i}` (the released layout). scan=True: one `nn.scan`, params
    `blocks` stacked [num_blocks, ...], so the compiler sees (and compiles) a single block. remat: each block
    is rematerialised in the backward pass under `jax.checkpoint_policies.<remat_policy>` (what it may keep).

    prefix_fraction > 1 (a 'full' layout with a mask only): each block is also compiled for the first
    ⌈L / prefix_fraction⌉ rows and runs on those alone (`nn.cond`, a batch-wide predicate) whenever every
    valid row lies there, its output zero-padded back to L rows. Exact (rows never mix outside attention,
    which masks padding, and padding rows are zero either way) and params are unchanged; it spares the
    projections and MLPs the padding rows of a capacity sized for the fine level (G_L's 2x-pooled
    tokens are typically a quarter of its voxels) at the cost of compiling each block twice.
    """
    policy = getattr(jax.checkpoint_policies, remat_policy, None)
    if remat and policy is None:
        raise ValueError(f"remat_policy {remat_policy!r} is not a jax.checkpoint_policies member")
    cls = nn.remat(ModulatedTransformerCrossBlock, policy=policy, prevent_cse=not scan) if remat else ModulatedTransformerCrossBlock

    def apply(block, x, layout, mask):
        x = block(x, emb, context, layout)
        return x if mask is None else masked(x, mask)

    L = h.shape[1]
    rows = -(-L // prefix_fraction)
    if prefix_fraction <= 1 or rows >= L or mask is None or layout is None or layout.kind != "full":
        one = lambda block, x: apply(block, x, layout, mask)
    else:
        fits = row_extent(mask) <= rows
        head_mask = mask[:, :rows]

        def on_head(block, x):
            y = apply(block, x[:, :rows], full_layout(head_mask), head_mask)
            return jnp.pad(y, ((0, 0), (0, L - rows), (0, 0)))

        one = lambda block, x: nn.cond(fits, on_head, lambda block, x: apply(block, x, layout, mask), block, x)

    if not scan:
        for i in range(num_blocks):
            h = one(cls(*block_args, name=f"blocks_{i}"), h)
        return h
    stack = nn.scan(
        lambda block, x, _: (one(block, x), None),
        variable_axes={"params": 0}, split_rngs={"params": True}, length=num_blocks,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    h, _ = stack(cls(*block_args, name=SCANNED_BLOCKS), h, None)
    return h
