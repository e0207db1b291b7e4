"""Shared SLat-VAE base (reference `SparseTransformerBase`): the config header and the trunk
(Linear in, 3D APE, swin blocks) of the SLat encoder and the three SLat decoders.

The field names are those of the released checkpoints' json `args`, so `Class(**args)` builds every
network. `trunk` is called from inside each subclass's compact `__call__`, so its layers are created at
the network's top level (`input_layer`, `blocks_i`) exactly like the official keys (or, with `scan_blocks`, one
stacked `blocks`, which trellis_jax/checkpoints/keymap.py converts). Window partitions
are built once for each of the two shifts and reused by every block (as the reference caches them);
block i uses shift (window/2)·(i mod 2).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.layers import linear
from trellis_jax.modules.transformer import SCANNED_BLOCKS, TransformerBlock
from trellis_jax.sparse.attention import full_layout, swin_layout
from trellis_jax.sparse.pos_embed import absolute_position_embedding
from trellis_jax.sparse.tensor import SparseTensor, masked

Dtype = Any


class SLatVAEBase(nn.Module):
    """Fields shared by every SLat VAE network; subclasses add their head (and `in_channels` /
    `representation_config`). `use_fp16`/`use_checkpoint` are the released names; `dtype` is the
    compute dtype, `attn_impl` the attention kernel, `remat` (or `use_checkpoint`) rematerialises blocks,
    `scan_blocks` compiles one block for all (same numbers; params `blocks` stacked [num_blocks, ...])."""

    resolution: int
    model_channels: int
    latent_channels: int
    num_blocks: int
    num_heads: Optional[int] = None
    num_head_channels: Optional[int] = 64
    mlp_ratio: float = 4
    attn_mode: str = "swin"
    window_size: int = 8
    pe_mode: str = "ape"
    use_fp16: bool = False
    use_checkpoint: bool = False
    qk_rms_norm: bool = False
    dtype: Dtype = jnp.float32
    attn_impl: str = "xla"
    remat: bool = False
    scan_blocks: bool = False  # nn.scan over the blocks (params stacked; checkpoints convert, keymap.py)

    def trunk(self, x: SparseTensor) -> jax.Array:
        """x [B, L, Cin] -> [B, L, model_channels] in the compute dtype (padding rows zero)."""
        C = self.model_channels
        heads = self.num_heads or C // self.num_head_channels
        h = linear(C, ("io", "embed"), "input_layer")(x.feats.astype(jnp.float32))
        if self.pe_mode == "ape":
            h = h + absolute_position_embedding(x.coords, C)
        elif self.pe_mode != "none":
            raise NotImplementedError(f"pe_mode {self.pe_mode!r} is not used by released SLat VAEs")
        h = jax.lax.optimization_barrier(masked(h, x.mask).astype(self.dtype))  # materialised, as `apply` below
        if self.attn_mode == "swin":
            layouts = [swin_layout(x.coords, x.mask, self.window_size, i) for i in (0, 1)]  # block i uses layouts[i % 2]
        elif self.attn_mode == "full":
            layouts = [full_layout(x.mask)] * 2
        else:
            raise NotImplementedError(f"attn_mode {self.attn_mode!r} (released models use 'swin')")
        remat = self.remat or self.use_checkpoint
        block_cls = nn.remat(TransformerBlock, prevent_cse=not self.scan_blocks) if remat else TransformerBlock
        block_args = (C, heads, self.mlp_ratio, self.qk_rms_norm, self.dtype, self.attn_impl)

        def apply(block, h, layout):
            # materialised once: fused into both its consumers (the next LN and residual add), the masked
            # sum would keep its two operands alive through the next attention instead (+1 [B, L, C] buffer)
            return jax.lax.optimization_barrier(masked(block(h, layout), x.mask))

        if not self.scan_blocks:
            for i in range(self.num_blocks):
                h = apply(block_cls(*block_args, name=f"blocks_{i}"), h, layouts[i % 2])
            return h
        both = jax.tree.map(lambda *a: jnp.stack(a), *layouts)  # [2, ...]: block i uses both[i % 2]
        stack = nn.scan(
            lambda block, h, parity: (apply(block, h, jax.tree.map(lambda a: a[parity], both)), None),
            variable_axes={"params": 0}, split_rngs={"params": True}, length=self.num_blocks,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        h, _ = stack(block_cls(*block_args, name=SCANNED_BLOCKS), h, jnp.arange(self.num_blocks) % 2)
        return h
