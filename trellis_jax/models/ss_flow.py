"""Sparse-structure flow transformer G_S (reference `SparseStructureFlowModel`).

A dense DiT over the 16³×8 structure latent: every voxel (or p³ patch) is a token (n = 256x + 16y + z
for patch 1), with a fixed sinusoidal position table (`pos_emb`, a non-trainable parameter so the
official checkpoint's buffer loads), AdaLN-modulated self-attention, cross-attention to the condition
tokens, and a zero-initialised output layer predicting the velocity.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.embeddings import TimestepEmbedder
from trellis_jax.modules.layers import linear
from trellis_jax.modules.transformer import cross_block_stack
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.pos_embed import absolute_position_embedding

Dtype = Any


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, R, R, R, C] -> tokens [B, (R/p)³, C·p³]; channel c·p³ + (i·p² + j·p + k), as the reference."""
    B, R, _, _, C = x.shape
    r = R // p
    x = x.reshape(B, r, p, r, p, r, p, C).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(B, r**3, C * p**3)


def unpatchify(tokens: jax.Array, p: int, resolution: int) -> jax.Array:
    """Inverse of `patchify`: [B, (R/p)³, C·p³] -> [B, R, R, R, C]."""
    B = tokens.shape[0]
    r = resolution // p
    C = tokens.shape[-1] // p**3
    x = tokens.reshape(B, r, r, r, C, p, p, p).transpose(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, resolution, resolution, resolution, C)


def grid_coords(r: int) -> jax.Array:
    """All voxel indices of an r³ grid, x-major: [r³, 3]."""
    g = jnp.stack(jnp.meshgrid(*(jnp.arange(r),) * 3, indexing="ij"), -1)
    return g.reshape(-1, 3)


class SparseStructureFlowModel(nn.Module):
    """x [B, R, R, R, Cin] (channels-last), t [B] in [0, 1], cond [B, Lc, Cc] -> velocity [B, R, R, R, Cout]."""

    resolution: int
    in_channels: int
    model_channels: int
    cond_channels: int
    out_channels: int
    num_blocks: int
    num_heads: Optional[int] = None
    num_head_channels: Optional[int] = 64
    mlp_ratio: float = 4
    patch_size: int = 2
    pe_mode: str = "ape"
    use_fp16: bool = False
    use_checkpoint: bool = False
    share_mod: bool = False
    qk_rms_norm: bool = False
    qk_rms_norm_cross: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    remat: bool = False
    scan_blocks: bool = False  # nn.scan over the blocks (params stacked; checkpoints convert, keymap.py)
    remat_policy: str = "nothing_saveable"  # jax.checkpoint_policies member, with remat/use_checkpoint

    @property
    def heads(self) -> int:
        return self.num_heads or self.model_channels // self.num_head_channels

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        R, p, C = self.resolution, self.patch_size, self.model_channels
        expected = (self.resolution,) * 3 + (self.in_channels,)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"G_S input must be [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if self.pe_mode != "ape":
            raise NotImplementedError("only pe_mode='ape' is used by released TRELLIS models")
        h = linear(C, ("io", "embed"), "input_layer")(patchify(x.astype(jnp.float32), p))
        pos = self.param(
            "pos_emb",
            nn.with_logical_partitioning(lambda _, shape: absolute_position_embedding(grid_coords(R // p), C), (None, "embed")),
            ((R // p) ** 3, C),
        )
        h = h + jax.lax.stop_gradient(pos)[None]
        emb = TimestepEmbedder(C, name="t_embedder")(1000.0 * t)
        if self.share_mod:
            emb = linear(6 * C, ("embed", "mlp"), "adaLN_modulation_1", zero_init=True)(nn.silu(emb))
        h, emb, cond = h.astype(self.dtype), emb.astype(self.dtype), cond.astype(self.dtype)
        h = cross_block_stack(
            h, emb, cond, None, None, num_blocks=self.num_blocks,
            block_args=(C, self.cond_channels, self.heads, self.mlp_ratio, self.qk_rms_norm, self.qk_rms_norm_cross,
                        self.share_mod, self.dtype, self.attn_impl),
            scan=self.scan_blocks, remat=self.remat or self.use_checkpoint, remat_policy=self.remat_policy,
        )
        h = layer_norm(h.astype(jnp.float32), 1e-5)
        h = linear(self.out_channels * p**3, ("embed", "io"), "out_layer", zero_init=True)(h)
        return unpatchify(h, p, R)
