"""Batched 3D Gaussians decoded from SLAT, activated as the reference's `Gaussian` getters."""
from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Gaussians:
    """N = L·G Gaussians per sample, flattened voxel-major (voxel·G + g); padding voxels masked out.

    xyz          [B, N, 3]  world positions in [−0.5, 0.5]³ (z-up)
    features_dc  [B, N, 3]  degree-0 SH coefficients (colour = 0.2820948·f_dc + 0.5)
    scaling      [B, N, 3]  activated scales incl. the 3D filter: sqrt(softplus(s + b)² + k3d²)
    rotation     [B, N, 4]  unit quaternions (w, x, y, z)
    opacity      [B, N]     in (0, 1)
    mask         [B, N]     valid Gaussians
    """

    xyz: jax.Array
    features_dc: jax.Array
    scaling: jax.Array
    rotation: jax.Array
    opacity: jax.Array
    mask: jax.Array

    def sample(self, b: int) -> dict:
        """Host arrays of sample b's valid Gaussians (for export)."""
        import numpy as np

        m = np.asarray(self.mask[b])
        return {k: np.asarray(getattr(self, k)[b])[m] for k in ("xyz", "features_dc", "scaling", "rotation", "opacity")}
