"""Differentiable 3D Gaussian splatting in pure JAX, with static shapes: a tiled rasteriser.

As the reference's rasteriser: each Gaussian is projected (EWA: Σ' = J W Σ Wᵀ Jᵀ + kernel·I, the
Mip-Splatting 2D filter), gets a screen radius of 3·sqrt(largest eigenvalue of Σ') and is binned into the
`tile_size`² tiles its square touches (`render.tiles.bin_boxes`, after a global depth sort, so each tile's
list is front to back). Each tile keeps its first `tile_capacity` Gaussians and composites them front to
back for its pixels (α = min(0.99, o·exp(−½ dᵀΣ'⁻¹d)), dropped below 1/255; a pixel stops once its
transmittance would fall below 1e-4), over chunks of tiles under `jax.checkpoint`, so memory is
[tile_chunk, tile_size², tile_capacity] in both passes. Gaussians of any screen size are drawn whole.

Capacities: a tile list cut at `tile_capacity` drops only Gaussians behind the kept ones, so the error of
a pixel is at most its transmittance after them; `overflow` is set when that exceeds 1/255 in a tile that
was cut, or when the (tile, Gaussian) pairs exceed `bin_capacity`. `load` says what the capacities must be.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trellis_jax.render.tiles import bin_boxes

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


class GaussianRender(NamedTuple):
    """One view: rgb f32 [H, W, 3] (composited on the background), alpha [H, W], depth [H, W] (α-weighted
    camera z), overflow bool [] (a capacity cut visible Gaussians), load int32 [2] (most Gaussians in one
    tile, (tile, Gaussian) pairs)."""

    rgb: jax.Array
    alpha: jax.Array
    depth: jax.Array
    overflow: jax.Array
    load: jax.Array


ALPHA_MIN = 1.0 / 255
T_MIN = 1e-4


@functools.partial(jax.jit, static_argnames=("height", "width", "near", "far", "kernel_size", "tile_size",
                                             "tile_capacity", "bin_capacity", "tile_chunk"))
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
    near: float = 0.8,
    far: float = 1.6 + 10.0,
    kernel_size: float = 0.1,
    tile_size: int = 4,
    tile_capacity: int = 512,
    bin_capacity: int | None = None,
    tile_chunk: int = 128,
) -> GaussianRender:
    """Render one view. means [N,3] world; colors [N,3] RGB; opacities [N]; scales [N,3]; rotations [N,4]
    (w,x,y,z); valid bool [N]; extrinsics [4,4] OpenCV world→camera; intrinsics [3,3] normalised;
    background [3]. `bin_capacity` bounds the (tile, Gaussian) pairs, by default 12·N + 4·tiles.

    Defaults, measured on 640K Gaussians of scale 0.004 on a 0.4-radius shell at 512² (a decoded SLAT's
    density; `benchmarks/renderers.py`): 4² tiles and 512 per list leave 2 pixels more than 1/255 off a
    render with unbounded lists (16² tiles need lists of ~10K: the shell's limb packs thousands per tile)."""
    n = means.shape[0]
    height_p, width_p = -(-height // tile_size) * tile_size, -(-width // tile_size) * tile_size
    ntx, nty = width_p // tile_size, height_p // tile_size
    num_tiles = ntx * nty
    if bin_capacity is None:
        bin_capacity = 12 * n + 4 * num_tiles
    R, t = extrinsics[:3, :3], extrinsics[:3, 3]
    cam = means @ R.T + t
    z = cam[:, 2]
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    zs = jnp.maximum(z, 1e-6)
    centre = jnp.stack([fx * cam[:, 0] / zs + cx, fy * cam[:, 1] / zs + cy], -1)  # screen coords (pixel centres at j + ½)
    rot = quaternion_to_matrix(rotations)
    cov3 = rot @ (jnp.square(scales)[:, :, None] * jnp.swapaxes(rot, -1, -2))
    J = jnp.zeros((n, 2, 3))
    J = J.at[:, 0, 0].set(fx / zs).at[:, 0, 2].set(-fx * cam[:, 0] / zs**2)
    J = J.at[:, 1, 1].set(fy / zs).at[:, 1, 2].set(-fy * cam[:, 1] / zs**2)
    JW = J @ R
    cov2 = JW @ cov3 @ jnp.swapaxes(JW, -1, -2) + kernel_size * jnp.eye(2)
    det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] ** 2
    conic = jnp.stack([cov2[:, 1, 1], -cov2[:, 0, 1], cov2[:, 0, 0]], -1) / jnp.maximum(det, 1e-12)[:, None]
    ok = valid & (z > near) & (z < far) & (det > 0)

    # binning (no gradient): depth-sorted, so every tile's list is front to back
    mid = 0.5 * (cov2[:, 0, 0] + cov2[:, 1, 1])
    radius = jnp.ceil(3.0 * jnp.sqrt(mid + jnp.sqrt(jnp.maximum(mid * mid - det, 0.1))))
    order = jnp.argsort(jnp.where(ok, z, jnp.inf))
    box_c, box_r = jax.lax.stop_gradient(centre[order]), jax.lax.stop_gradient(radius[order])[:, None]
    bins = bin_boxes(box_c - box_r, box_c + box_r, ok[order], height_p, width_p, tile_size, tile_capacity, bin_capacity)
    cand = jnp.where(bins.candidates >= 0, order[jnp.maximum(bins.candidates, 0)], -1)  # [tiles, C] Gaussian ids

    off = jnp.arange(tile_size) + 0.5
    local = jnp.stack(jnp.broadcast_arrays(off[None, :], off[:, None]), -1).reshape(-1, 2)  # [T², 2] (x, y)
    gauss = (centre, conic, opacities, colors, z)

    @jax.checkpoint
    def tiles_block(gauss, block):
        centre, conic, opacities, colors, z = gauss
        tile_ids, c = block  # [B], [B, C]
        origin = jnp.stack([tile_ids % ntx, tile_ids // ntx], -1).astype(jnp.float32) * tile_size
        p = origin[:, None, :] + local[None]  # [B, T², 2]
        gid = jnp.maximum(c, 0)
        d = p[:, :, None, :] - centre[gid][:, None]  # [B, T², C, 2]
        q = conic[gid][:, None]
        power = -0.5 * (q[..., 0] * d[..., 0] ** 2 + q[..., 2] * d[..., 1] ** 2) - q[..., 1] * d[..., 0] * d[..., 1]
        alpha = jnp.minimum(0.99, opacities[gid][:, None] * jnp.exp(jnp.minimum(power, 0.0)))
        alpha = jnp.where((c >= 0)[:, None] & (power <= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)
        log_after = jnp.cumsum(jnp.log1p(-alpha), -1)
        keep = log_after >= jnp.log(T_MIN)  # the reference stops a pixel before its transmittance drops below 1e-4
        alpha = jnp.where(keep, alpha, 0.0)
        log_after = jnp.cumsum(jnp.log1p(-alpha), -1)
        trans = jnp.exp(log_after - jnp.log1p(-alpha))  # before each Gaussian
        w = alpha * trans
        rgb = jnp.einsum("bpc,bcd->bpd", w, colors[gid])
        acc = jnp.sum(w, -1)
        dep = jnp.einsum("bpc,bc->bp", w, z[gid])
        residual = jnp.exp(log_after[..., -1])  # transmittance after the kept list
        return rgb, acc, dep, residual

    pad = (-num_tiles) % tile_chunk
    tile_ids = jnp.arange(num_tiles + pad)
    cand_p = jnp.concatenate([cand, jnp.full((pad, cand.shape[1]), -1, cand.dtype)])
    rgb, acc, dep, residual = jax.lax.map(lambda blk: tiles_block(gauss, blk),
                                          (tile_ids.reshape(-1, tile_chunk), cand_p.reshape(-1, tile_chunk, cand.shape[1])))

    def image(x):  # [chunks, B, T², ...] -> [H, W, ...]
        x = x.reshape((num_tiles + pad, tile_size, tile_size) + x.shape[3:])[:num_tiles]
        x = x.reshape((nty, ntx, tile_size, tile_size) + x.shape[3:])
        return jnp.swapaxes(x, 1, 2).reshape((height_p, width_p) + x.shape[4:])[:height, :width]

    rgb, acc, dep = image(rgb), image(acc), image(dep)
    cut = (bins.count > tile_capacity)[:, None]
    worst = jnp.max(jnp.where(cut, residual.reshape(num_tiles + pad, -1)[:num_tiles], 0.0))
    overflow = (bins.pairs > bin_capacity) | (worst > ALPHA_MIN)
    rgb = rgb + (1 - acc)[..., None] * background
    return GaussianRender(rgb, acc, dep, overflow, jnp.stack([jnp.max(bins.count), bins.pairs]))


def sh_dc_to_rgb(features_dc: jax.Array) -> jax.Array:
    """Degree-0 SH coefficients [..., 3] -> RGB, clamped at 0 (as the reference rasteriser)."""
    return jnp.maximum(SH_C0 * features_dc + 0.5, 0.0)
