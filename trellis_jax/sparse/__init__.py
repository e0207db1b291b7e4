"""The sparse voxel core: padded voxel sets and the ops TRELLIS runs on them."""
from trellis_jax.sparse.attention import (
    AttentionLayout,
    cross_attention,
    dense_attention,
    full_layout,
    sparse_self_attention,
    swin_layout,
    window_layout,
)
from trellis_jax.sparse.conv import kernel_from_torch, kernel_to_torch, submanifold_conv3d
from trellis_jax.sparse.neighbors import kernel_offsets, neighbor_map
from trellis_jax.sparse.norm import group_norm, layer_norm
from trellis_jax.sparse.pos_embed import absolute_position_embedding
from trellis_jax.sparse.resample import downsample, downsample_overflow, subdivide, upsample
from trellis_jax.sparse.tensor import CapacityError, SparseTensor, check_overflow, compact, masked

__all__ = [
    "AttentionLayout", "CapacityError", "SparseTensor", "absolute_position_embedding", "check_overflow",
    "compact", "cross_attention", "dense_attention", "downsample", "downsample_overflow", "full_layout",
    "group_norm", "kernel_from_torch", "kernel_offsets", "kernel_to_torch", "layer_norm", "masked",
    "neighbor_map", "sparse_self_attention", "subdivide", "submanifold_conv3d", "swin_layout",
    "upsample", "window_layout",
]
