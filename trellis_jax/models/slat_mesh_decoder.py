"""SLat -> FlexiCubes mesh features decoder (reference `SLatMeshDecoder`).

Trunk at 64³ (no final norm), then two subdivision blocks (64³→128³→256³, channels C→C/4→C/8), then
a Linear to 101 channels per 256³ voxel: sdf [8], deform [8, 3], weights [21], color [8, 6] (with
`use_color`; 53 channels without). The FlexiCubes surface extraction is a separate step.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.models.slat_vae_trunk import SLatVAEBase
from trellis_jax.modules.layers import linear
from trellis_jax.modules.sparse_conv import SparseConv3d
from trellis_jax.sparse.neighbors import neighbor_map
from trellis_jax.sparse.norm import group_norm
from trellis_jax.sparse.resample import subdivide
from trellis_jax.sparse.tensor import SparseTensor, masked

Dtype = Any
NUM_GROUPS = 32


def mesh_channel_split(feats: jax.Array, use_color: bool = True) -> dict[str, jax.Array]:
    """[..., 101] (or 53) -> sdf [..., 8], deform [..., 8, 3], weights [..., 21], color [..., 8, 6]."""
    out = {
        "sdf": feats[..., 0:8],
        "deform": feats[..., 8:32].reshape(feats.shape[:-1] + (8, 3)),
        "weights": feats[..., 32:53],
    }
    if use_color:
        out["color"] = feats[..., 53:101].reshape(feats.shape[:-1] + (8, 6))
    return out


class GroupNorm32(nn.Module):
    """Per-sample GroupNorm (32 groups, affine, eps 1e-5, f32) over each sample's valid voxels."""

    @nn.compact
    def __call__(self, feats, mask):
        c = feats.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,), jnp.float32)
        return group_norm(feats, mask, NUM_GROUPS, 1e-5, scale, bias)


class SparseSubdivideBlock3d(nn.Module):
    """h = SiLU(GN(x)); subdivide h and x; h = conv3(h); h = SiLU(GN(h)); h = conv3_zero(h); + skip(x)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: SparseTensor) -> SparseTensor:
        c_in = x.feats.shape[-1]
        h = nn.silu(GroupNorm32(name="act_layers_0")(x.feats, x.mask))
        fine_x = subdivide(x)
        fine_h = subdivide(x.replace(feats=h))
        nbr = neighbor_map(fine_x.coords, fine_x.mask)
        h = SparseConv3d(self.out_channels, 3, dtype=self.dtype, name="out_layers_0")(fine_h.feats, nbr, fine_x.mask)
        h = nn.silu(GroupNorm32(name="out_layers_1")(h, fine_x.mask))
        h = SparseConv3d(self.out_channels, 3, zero_init=True, dtype=self.dtype, name="out_layers_3")(h, nbr, fine_x.mask)
        if c_in == self.out_channels:
            skip = fine_x.feats
        else:
            ones = jnp.zeros(fine_x.mask.shape + (1,), jnp.int32) + jnp.arange(fine_x.mask.shape[1])[None, :, None]
            self_nbr = jnp.where(fine_x.mask[..., None], ones, -1)
            skip = SparseConv3d(self.out_channels, 1, dtype=self.dtype, name="skip_connection")(fine_x.feats, self_nbr, fine_x.mask)
        return fine_x.replace(feats=masked(h + skip.astype(h.dtype), fine_x.mask))


class SLatMeshDecoder(SLatVAEBase):
    """z: SparseTensor [B, L, latent_channels] at 64³ -> SparseTensor [B, 64·L, 101] at 256³."""

    representation_config: Optional[dict] = None

    @property
    def out_channels(self) -> int:
        return 101 if dict(self.representation_config or {}).get("use_color", False) else 53

    @nn.compact
    def __call__(self, z: SparseTensor) -> SparseTensor:
        C = self.model_channels
        h = z.replace(feats=self.trunk(z))
        h = SparseSubdivideBlock3d(C // 4, self.dtype, name="upsample_0")(h)
        h = SparseSubdivideBlock3d(C // 8, self.dtype, name="upsample_1")(h)
        out = linear(self.out_channels, ("conv_out", "io"), "out_layer", zero_init=True)(h.feats.astype(jnp.float32))
        return h.replace(feats=masked(out, h.mask))
