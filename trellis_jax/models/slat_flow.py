"""Structured-latent flow transformer G_L (reference `SLatFlowModel` / `ElasticSLatFlowModel`).

Sparse U-shaped DiT on the active voxels: input res blocks at 64³ (the last one mean-pools to 32³),
a 3D position embedding on the *downsampled* coordinates, N AdaLN cross blocks with full attention
within each sample, then output res blocks fed with the skip features (concatenated after h) where
the first one unpools back to the 64³ voxels. Neighbour maps are built once per resolution.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.embeddings import TimestepEmbedder
from trellis_jax.modules.layers import AffineLayerNorm, linear
from trellis_jax.modules.sparse_conv import SparseConv3d
from trellis_jax.modules.transformer import cross_block_stack
from trellis_jax.sparse.attention import full_layout
from trellis_jax.sparse.neighbors import neighbor_map
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.pos_embed import absolute_position_embedding
from trellis_jax.sparse.resample import downsample, upsample
from trellis_jax.sparse.tensor import SparseTensor, masked

Dtype = Any


class SparseResBlock3d(nn.Module):
    """Time-modulated sparse residual block; resampling (if any) happens first.

    emb [B, E] -> (scale, shift) (scale first); h = conv1(SiLU(LN_affine(x))); h = conv2(SiLU(
    LN(h)·(1 + scale) + shift)) with conv2 zero-initialised; out = h + skip(x).
    """

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats, mask, neighbors, emb):
        """feats [B, L, Cin] (already resampled), mask [B, L], neighbors [B, L, 27], emb [B, E]."""
        c_in, c_out = feats.shape[-1], self.out_channels
        mod = linear(2 * c_out, ("embed", "conv_out"), "emb_layers_1", self.dtype)(nn.silu(emb)).astype(self.dtype)
        scale, shift = jnp.split(mod[:, None, :], 2, axis=-1)
        h = nn.silu(AffineLayerNorm(1e-6, name="norm1")(feats))
        h = SparseConv3d(c_out, 3, dtype=self.dtype, name="conv1")(h, neighbors, mask)
        h = nn.silu(layer_norm(h, 1e-6) * (1 + scale) + shift)
        h = SparseConv3d(c_out, 3, zero_init=True, dtype=self.dtype, name="conv2")(h, neighbors, mask)
        skip = feats if c_in == c_out else linear(c_out, ("conv_in", "conv_out"), "skip_connection", self.dtype)(feats)
        return masked(h + skip.astype(h.dtype), mask)


class SLatFlowModel(nn.Module):
    """x: SparseTensor [B, L, Cin] at `resolution`³, t [B] in [0, 1], cond [B, Lc, Cc] -> velocity SparseTensor."""

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
    num_io_res_blocks: int = 2
    io_block_channels: Optional[Sequence[int]] = None
    pe_mode: str = "ape"
    use_fp16: bool = False
    use_checkpoint: bool = False
    use_skip_connection: bool = True
    share_mod: bool = False
    qk_rms_norm: bool = False
    qk_rms_norm_cross: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    remat: bool = False
    scan_blocks: bool = False  # nn.scan over the blocks (params stacked; checkpoints convert, keymap.py)
    remat_policy: str = "nothing_saveable"  # jax.checkpoint_policies member, with remat/use_checkpoint
    # The coarse level keeps the fine capacity L (exact for any voxel set) though 2x pooling typically leaves
    # ~L/4 tokens: the blocks also run on the first ⌈L/k⌉ rows when all tokens fit (cross_block_stack); 1 = off.
    token_prefix_fraction: int = 4

    @property
    def heads(self) -> int:
        return self.num_heads or self.model_channels // self.num_head_channels

    def _stages(self):
        """[(c_in, c_out, downsample)] of the input blocks and [(c_in, c_out, upsample)] of the output blocks."""
        io = list(self.io_block_channels or [])
        C, skip = self.model_channels, 2 if self.use_skip_connection else 1
        ins, outs = [], []
        for chs, nxt in zip(io, io[1:] + [C]):
            ins += [(chs, chs, False)] * (self.num_io_res_blocks - 1) + [(chs, nxt, True)]
        for chs, prev in zip(reversed(io), [C] + list(reversed(io[1:]))):
            outs += [(prev * skip, chs, True)] + [(chs * skip, chs, False)] * (self.num_io_res_blocks - 1)
        return ins, outs

    @nn.compact
    def __call__(self, x: SparseTensor, t: jax.Array, cond: jax.Array) -> SparseTensor:
        if self.pe_mode != "ape":
            raise NotImplementedError("only pe_mode='ape' is used by released TRELLIS models")
        io = list(self.io_block_channels or [])
        if io and 2 ** len(io) != self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} needs log2(patch) = len(io_block_channels) = {len(io)}")
        C = self.model_channels
        ins, outs = self._stages()
        mask = x.mask
        h = linear(io[0] if io else C, ("io", "conv_out"), "input_layer")(x.feats.astype(jnp.float32))
        h = masked(h, mask).astype(self.dtype)
        emb = TimestepEmbedder(C, name="t_embedder")(1000.0 * t)
        if self.share_mod:
            emb = linear(6 * C, ("embed", "mlp"), "adaLN_modulation_1", zero_init=True)(nn.silu(emb))
        emb, cond = emb.astype(self.dtype), cond.astype(self.dtype)

        level = SparseTensor(x.coords, h, mask, x.resolution)
        neighbors = neighbor_map(level.coords, level.mask)
        pyramid = []  # (fine level, its neighbours, parent index) per downsample, for the way back up
        skips = []
        for i, (_, c_out, down) in enumerate(ins):
            feats = level.feats
            if down:
                coarse, parent = downsample(level)
                pyramid.append((level, neighbors, parent))
                level, neighbors = coarse, neighbor_map(coarse.coords, coarse.mask)
                feats = level.feats
            feats = SparseResBlock3d(c_out, self.dtype, name=f"input_blocks_{i}")(feats, level.mask, neighbors, emb)
            level = level.replace(feats=feats)
            skips.append(feats)

        h = level.feats
        h = h + absolute_position_embedding(level.coords, C).astype(h.dtype)
        h = masked(h, level.mask)
        layout = full_layout(level.mask)
        h = cross_block_stack(
            h, emb, cond, layout, level.mask, num_blocks=self.num_blocks,
            block_args=(C, self.cond_channels, self.heads, self.mlp_ratio, self.qk_rms_norm, self.qk_rms_norm_cross,
                        self.share_mod, self.dtype, self.attn_impl),
            scan=self.scan_blocks, remat=self.remat or self.use_checkpoint, remat_policy=self.remat_policy,
            prefix_fraction=self.token_prefix_fraction,
        )

        for i, ((_, c_out, up), skip) in enumerate(zip(outs, reversed(skips))):
            if self.use_skip_connection:
                h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
            if up:
                fine, neighbors, parent = pyramid.pop()
                level = upsample(h, parent, fine.replace(feats=jnp.zeros(fine.feats.shape[:2] + (h.shape[-1],), h.dtype)))
                h = level.feats
            h = SparseResBlock3d(c_out, self.dtype, name=f"out_blocks_{i}")(h, level.mask, neighbors, emb)

        h = layer_norm(h.astype(jnp.float32), 1e-5)
        out = linear(self.out_channels, ("conv_out", "io"), "out_layer", zero_init=True)(h)
        return SparseTensor(x.coords, masked(out, mask), mask, x.resolution)


ElasticSLatFlowModel = SLatFlowModel
