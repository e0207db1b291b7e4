"""Synthetic assets for the decoder stages: textured ellipsoids, voxelised and rendered analytically.

Each asset (a pure function of its numpy Generator) is an ellipsoid (centre, radii) whose surface colour
is a smooth pattern of the position; it gives what the data pipeline gives for a real asset:

    coords  int32 [L, 3]      voxels of the res³ grid the surface passes through (valid rows first)
    feats   f32   [L, C]      per-voxel features: a fixed random linear map (`basis`) of colour, position, sdf
    mask    bool  [L]
    one view from a random orbit camera (radius 2, FoV 40°, as the reference's renders), analytic ray casting:
    extrinsics [4, 4], intrinsics [3, 3], image [S, S, 3] (straight colour), alpha [S, S],
    depth [S, S] (camera z, 0 off the asset), normal [S, S, 3] (world, facing the camera, mapped to [0, 1])
"""
from __future__ import annotations

import numpy as np

from trellis_jax.render.cameras import orbit_cameras


def feature_basis(seed: int, channels: int) -> np.ndarray:
    """Fixed [7, channels] map from (colour, position, sdf·res) to voxel features."""
    return np.random.default_rng(seed).standard_normal((7, channels)).astype(np.float32)


def _colour(p: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return 0.5 + 0.4 * np.sin(6.0 * p + phase)


def ellipsoid_asset(g: np.random.Generator, resolution: int, capacity: int, basis: np.ndarray, image_size: int) -> dict:
    centre = g.uniform(-0.08, 0.08, 3)
    radii = g.uniform(0.18, 0.36, 3)
    phase = g.uniform(0, 2 * np.pi, 3)
    c = (np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / resolution - 0.5
    while True:  # shrink until the surface voxels fit the capacity
        sdf = (np.linalg.norm((c - centre) / radii, axis=-1) - 1.0) * radii.min()
        shell = np.flatnonzero(np.abs(sdf) < 0.87 / resolution)
        if len(shell) <= capacity:
            break
        radii = radii * 0.9
    n = len(shell)
    coords = np.zeros((capacity, 3), np.int32)
    feats = np.zeros((capacity, basis.shape[1]), np.float32)
    coords[:n] = np.stack(np.unravel_index(shell, (resolution,) * 3), -1)
    raw = np.concatenate([_colour(c[shell], phase), c[shell], sdf[shell, None] * resolution], -1)
    feats[:n] = raw @ basis
    mask = np.arange(capacity) < n
    yaw, pitch = g.uniform(0, 2 * np.pi), g.uniform(-0.5, 1.0)
    E, K = orbit_cameras([yaw], [pitch], 2.0, 40.0)
    view = render_ellipsoid(centre, radii, phase, E[0], K[0], image_size)
    return dict(coords=coords, feats=feats, mask=mask, extrinsics=E[0], intrinsics=K[0], **view)


def render_ellipsoid(centre, radii, phase, E, K, size: int) -> dict:
    """Analytic render of the textured ellipsoid: image, alpha, depth, normal (see the module docstring)."""
    R, t = E[:3, :3].astype(np.float64), E[:3, 3].astype(np.float64)
    origin = -R.T @ t
    jj, ii = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size)
    d_cam = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1)
    d = d_cam @ R  # world directions with camera z = 1
    o = (origin - centre) / radii
    dd = d / radii
    a = np.sum(dd * dd, -1)
    b = 2 * np.sum(dd * o, -1)
    cc = np.sum(o * o) - 1
    disc = b * b - 4 * a * cc
    hit = disc > 0
    z = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)  # camera z (d has z = 1)
    p = origin + z[..., None] * d
    n = (p - centre) / radii**2
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    hm = hit[..., None]
    return dict(image=np.where(hm, _colour(p, phase), 0.0).astype(np.float32), alpha=hit.astype(np.float32),
                depth=z.astype(np.float32), normal=np.where(hm, (n + 1) / 2, 0.0).astype(np.float32))


def asset_batch(g: np.random.Generator, batch_size: int, resolution: int, capacity: int, basis: np.ndarray,
                image_size: int) -> dict:
    """`batch_size` assets stacked along a leading axis (the keys of `ellipsoid_asset`)."""
    assets = [ellipsoid_asset(g, resolution, capacity, basis, image_size) for _ in range(batch_size)]
    return {k: np.stack([a[k] for a in assets]) for k in assets[0]}
