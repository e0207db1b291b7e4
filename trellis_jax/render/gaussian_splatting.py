"""Differentiable 3D Gaussian splatting in pure JAX, with static shapes.

Each Gaussian is projected (EWA: Σ' = J W Σ Wᵀ Jᵀ + kernel·I, the Mip-Splatting 2D filter) and
splatted onto a fixed K×K pixel footprint around its projected centre, giving N·K² fragments. Fragments
are sorted by (pixel, depth) and alpha-composited front to back with a segmented product computed in
log space, so the whole render is one jittable, differentiable function of the Gaussians. Gaussians
wider than the footprint are truncated to it (fine for previews and for the small screen-space sizes
of SLAT Gaussians; a tiled rasteriser can replace this without changing the API).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SH_C0 = 0.28209479177387814


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
    """(w, x, y, z) [..., 4] -> rotation [..., 3, 3]."""
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = jnp.moveaxis(q, -1, 0)
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


@functools.partial(jax.jit, static_argnames=("height", "width", "footprint", "near", "far", "kernel_size"))
def render_gaussians(
    means: jax.Array,
    colors: jax.Array,
    opacities: jax.Array,
    scales: jax.Array,
    rotations: jax.Array,
    valid: jax.Array,
    extrinsics: jax.Array,
    intrinsics: jax.Array,
    background: jax.Array,
    *,
    height: int,
    width: int,
    footprint: int = 7,
    near: float = 0.8,
    far: float = 1.6 + 10.0,
    kernel_size: float = 0.1,
):
    """Render one view. means [N,3] world; colors [N,3] RGB; opacities [N]; scales [N,3];
    rotations [N,4] (w,x,y,z); valid bool [N]; extrinsics [4,4] OpenCV world→camera; intrinsics
    [3,3] normalised; background [3]. Returns (rgb [H,W,3], alpha [H,W], depth [H,W])."""
    R, t = extrinsics[:3, :3], extrinsics[:3, 3]
    cam = means @ R.T + t
    z = cam[:, 2]
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    zs = jnp.maximum(z, 1e-6)
    u = fx * cam[:, 0] / zs + cx - 0.5  # pixel-centre coordinates
    v = fy * cam[:, 1] / zs + cy - 0.5
    rot = quaternion_to_matrix(rotations)
    cov3 = rot @ (jnp.square(scales)[:, :, None] * jnp.swapaxes(rot, -1, -2))
    J = jnp.zeros((means.shape[0], 2, 3))
    J = J.at[:, 0, 0].set(fx / zs).at[:, 0, 2].set(-fx * cam[:, 0] / zs**2)
    J = J.at[:, 1, 1].set(fy / zs).at[:, 1, 2].set(-fy * cam[:, 1] / zs**2)
    JW = J @ R
    cov2 = JW @ cov3 @ jnp.swapaxes(JW, -1, -2) + kernel_size * jnp.eye(2)
    det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] ** 2
    inv = jnp.stack([cov2[:, 1, 1], -cov2[:, 0, 1], cov2[:, 0, 0]], -1) / jnp.maximum(det, 1e-12)[:, None]
    ok = valid & (z > near) & (z < far)

    r = footprint // 2
    offs = jnp.arange(-r, r + 1)
    px = jnp.round(u).astype(jnp.int32)[:, None, None] + offs[None, None, :]
    py = jnp.round(v).astype(jnp.int32)[:, None, None] + offs[None, :, None]
    px, py = jnp.broadcast_arrays(px, py)  # [N, K, K]
    dx, dy = px - u[:, None, None], py - v[:, None, None]
    power = -0.5 * (inv[:, 0, None, None] * dx * dx + 2 * inv[:, 1, None, None] * dx * dy + inv[:, 2, None, None] * dy * dy)
    alpha = jnp.minimum(0.99, opacities[:, None, None] * jnp.exp(jnp.minimum(power, 0.0)))
    inside = ok[:, None, None] & (px >= 0) & (px < width) & (py >= 0) & (py < height) & (alpha > 1.0 / 255)
    alpha = jnp.where(inside, alpha, 0.0)

    pix = jnp.where(inside, py * width + px, height * width).reshape(-1)  # sentinel pixel for dropped
    depth = jnp.broadcast_to(z[:, None, None], px.shape).reshape(-1)
    a = alpha.reshape(-1)
    order = jnp.lexsort((depth, pix))
    pix_s, a_s = pix[order], a[order]
    frag_gauss = jnp.repeat(jnp.arange(means.shape[0]), footprint * footprint)[order]
    log_t = jnp.log1p(-a_s)
    start = jnp.concatenate([jnp.array([True]), pix_s[1:] != pix_s[:-1]])
    _, incl = jax.lax.associative_scan(_segmented_sum, (start, log_t))
    trans = jnp.exp(incl - log_t)  # Π(1 − a) over earlier fragments of the same pixel
    w = a_s * trans
    npix = height * width + 1
    rgb = jax.ops.segment_sum(w[:, None] * colors[frag_gauss], pix_s, num_segments=npix)[:-1]
    acc = jax.ops.segment_sum(w, pix_s, num_segments=npix)[:-1]
    dep = jax.ops.segment_sum(w * depth[order], pix_s, num_segments=npix)[:-1]
    rgb = rgb + (1 - acc)[:, None] * background
    return rgb.reshape(height, width, 3), acc.reshape(height, width), dep.reshape(height, width)


def _segmented_sum(a, b):
    flag_a, val_a = a
    flag_b, val_b = b
    return flag_a | flag_b, jnp.where(flag_b, val_b, val_a + val_b)


def sh_dc_to_rgb(features_dc: jax.Array) -> jax.Array:
    """Degree-0 SH coefficients [..., 3] -> RGB, clamped at 0 (as the reference rasteriser)."""
    return jnp.maximum(SH_C0 * features_dc + 0.5, 0.0)
