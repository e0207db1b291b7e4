"""Shared SLat-VAE trunk (reference `SparseTransformerBase`): Linear in, 3D APE, swin blocks.

`sparse_transformer_trunk` is called from inside each SLat VAE network's compact `__call__`, so its
layers are created at the network's top level (`input_layer`, `blocks_i`) exactly like the official
keys. Window partitions are built once for each of the two shifts and reused by every block (as the
reference caches them); block i uses shift (window/2)·(i mod 2).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.modules.layers import linear
from trellis_jax.modules.transformer import TransformerBlock
from trellis_jax.sparse.attention import full_layout, swin_layout
from trellis_jax.sparse.pos_embed import absolute_position_embedding
from trellis_jax.sparse.tensor import SparseTensor, masked


def sparse_transformer_trunk(net: nn.Module, x: SparseTensor) -> jax.Array:
    """Run the trunk of SLat VAE network `net` (its fields: model_channels, num_blocks, num_heads,
    num_head_channels, mlp_ratio, attn_mode, window_size, pe_mode, qk_rms_norm, dtype, attn_impl,
    remat) on x [B, L, Cin] -> [B, L, model_channels] in the compute dtype (padding rows zero)."""
    C = net.model_channels
    heads = net.num_heads or C // net.num_head_channels
    h = linear(C, ("io", "embed"), "input_layer")(x.feats.astype(jnp.float32))
    if net.pe_mode == "ape":
        h = h + absolute_position_embedding(x.coords, C)
    elif net.pe_mode != "none":
        raise NotImplementedError(f"pe_mode {net.pe_mode!r} is not used by released SLat VAEs")
    h = masked(h, x.mask).astype(net.dtype)
    if net.attn_mode == "swin":
        layouts = [swin_layout(x.coords, x.mask, net.window_size, i) for i in (0, 1)]  # block i uses layouts[i % 2]
    elif net.attn_mode == "full":
        layouts = [full_layout(x.mask)] * 2
    else:
        raise NotImplementedError(f"attn_mode {net.attn_mode!r} (released models use 'swin')")
    block_cls = nn.remat(TransformerBlock) if (net.remat or net.use_checkpoint) else TransformerBlock
    for i in range(net.num_blocks):
        h = block_cls(C, heads, net.mlp_ratio, net.qk_rms_norm, net.dtype, net.attn_impl, name=f"blocks_{i}")(h, layouts[i % 2])
        h = masked(h, x.mask)
    return h
