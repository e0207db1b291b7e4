"""Preview images of decoded Gaussians: a grid of orbit views rendered with the JAX splatter."""
from __future__ import annotations

import sys

import numpy as np
from PIL import Image

import jax.numpy as jnp

from trellis_jax.atomic import atomic_write
from trellis_jax.render.cameras import orbit_cameras
from trellis_jax.render.gaussian_splatting import render_gaussians, sh_dc_to_rgb


def render_views(g: dict, yaws, pitches, resolution: int = 256, radius: float = 2.0, fov: float = 40.0, bg=(1.0, 1.0, 1.0)):
    """g: host dict of one sample's Gaussians (xyz, features_dc, scaling, rotation, opacity) -> uint8 [V, R, R, 3]."""
    ext, intr = orbit_cameras(yaws, pitches, radius, fov)
    return render_gaussian_views(g, ext, intr, resolution, bg)


def render_gaussian_views(g: dict, extrinsics, intrinsics, resolution: int, bg=(1.0, 1.0, 1.0), progress=None):
    """g as in `render_views`; cameras [V, 4, 4], [V, 3, 3] -> uint8 [V, R, R, 3]. `progress` wraps the
    view loop (e.g. a tqdm factory)."""
    n = len(g["xyz"])
    cap = max(1024, 1 << int(np.ceil(np.log2(max(n, 1)))))  # pad to a power of two: few compiled shapes
    pad = lambda a, fill=0.0: np.concatenate([a, np.full((cap - n,) + a.shape[1:], fill, a.dtype)]) if cap > n else a
    args = (
        jnp.asarray(pad(g["xyz"].astype(np.float32))),
        jnp.asarray(pad(np.asarray(sh_dc_to_rgb(jnp.asarray(g["features_dc"])), np.float32))),
        jnp.asarray(pad(g["opacity"].astype(np.float32))),
        jnp.asarray(pad(g["scaling"].astype(np.float32), 1e-3)),
        jnp.asarray(pad(g["rotation"].astype(np.float32), 0.5)),
        jnp.asarray(np.arange(cap) < n),
    )
    views = list(zip(extrinsics, intrinsics))
    frames, overflowed = [], 0
    for E, K in (progress(views) if progress else views):
        r = render_gaussians(*args, jnp.asarray(E), jnp.asarray(K), jnp.asarray(bg, jnp.float32), height=resolution, width=resolution)
        frames.append((np.clip(np.asarray(r.rgb), 0, 1) * 255).astype(np.uint8))
        overflowed += bool(r.overflow)
    if overflowed:
        print(f"WARNING: {overflowed} of {len(views)} Gaussian views overflowed the splatter's tile capacity "
              "(Gaussians behind a full tile list are missing where they would still show)", file=sys.stderr)
    return np.stack(frames)


def save_preview(path, g: dict, resolution: int = 192) -> None:
    """2×2 grid of views (yaw 0°, 90°, 180°, 270°; pitch 0.35 rad) as PNG."""
    frames = render_views(g, np.deg2rad([30, 120, 210, 300]), [0.35] * 4, resolution)
    grid = np.concatenate([np.concatenate(frames[:2], 1), np.concatenate(frames[2:], 1)], 0)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
