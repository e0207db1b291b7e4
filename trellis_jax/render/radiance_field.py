"""Differentiable volume rendering of a `Strivec` radiance field in pure JAX, with static shapes.

The field lives in the aabb [−0.5, 0.5]³ (world = aabb space − 0.5), one CP-decomposed local volume per
active voxel of a res³ grid. Inside voxel v at local position f ∈ [0, 1)³ (per axis a, u_a = D·f_a − ½,
i_a = clamp(⌊u_a⌋, 0, D − 2), linear weights from u_a − i_a, extrapolating at the voxel's outer half-cells):

    w_r = Π_a lerp(trivec[v, r, a, i_a], trivec[v, r, a, i_a + 1], u_a − i_a)
    σ   = softplus(Σ_r density[v, r] · w_r)             rgb = sigmoid(Σ_r C0 · features_dc[v, r, 0] · w_r)

Samples lie on one lattice along each unit-length ray, z_k = (k + jitter) · step with step = (½ / D) / res
(16 samples per voxel crossing at D = 8), α = min(1 − exp(−σ · step), 0.999), composited front to back;
a ray stops (later samples get no weight) once its transmittance falls below 1e-3. depth is Σ weight ·
camera-space z (not divided by alpha), alpha = 1 − final transmittance; rgb includes the background.

Static shapes: each ray walks `samples_per_ray` lattice points (default: enough for the aabb's longest
chord, √3) from where it enters the active voxels' bounding box, finds each point's voxel in a dense res³
index grid built by scatter from the active voxels, and keeps its first `sample_capacity` occupied points
in order (empty space has σ = 0, so skipping it is exact). Only those are evaluated, by trilinear reads of
each voxel's D³ factor lattice (`sub_lattice`, equal to the CP formula). A ray cut at the capacity while
its transmittance is still ≥ 1e-3 sets `overflow` (its far samples could show): check it; `max_samples`
is a capacity that always suffices. Opaque surfaces stop rays early, so a capacity well under the
occupied count is usually exact. Rays are processed in chunks of `ray_chunk` under `jax.checkpoint`
(forward and backward at 512² keep one chunk's samples in memory); a chunk whose rays all miss the
bounding box skips the walk.

Cameras as `cameras.py`: OpenCV world→camera extrinsics [4, 4], normalised intrinsics [3, 3], pixel
(i, j) through image point ((j + ½)/W, (i + ½)/H). Gradients flow to trivec, density and features_dc
(sample positions depend only on the camera and the voxel set).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trellis_jax.representations.strivec import Strivec

SH_C0 = 0.28209479177387814
STOP_TRANSMITTANCE = 1e-3
MAX_ALPHA = 0.999


class FieldRender(NamedTuple):
    """One view of a radiance field.

    rgb          f32  [H, W, 3]   composited colour over the background
    depth        f32  [H, W]      Σ weight · camera-space z (0 where empty)
    alpha        f32  [H, W]      1 − transmittance
    overflow     bool []          some ray had more occupied samples than `sample_capacity` and was still
                                  visible (transmittance ≥ 1e-3) at the cut: the image may be wrong
    max_samples  int32 []         most occupied samples on one ray (a capacity that is always enough)
    """

    rgb: jax.Array
    depth: jax.Array
    alpha: jax.Array
    overflow: jax.Array
    max_samples: jax.Array


def sample_step(field: Strivec) -> float:
    """Ray-marching step in world units: (½ / D) of a voxel (the reference renderer's)."""
    return 0.5 / field.trivec.shape[-1] / field.resolution


def default_samples_per_ray(field: Strivec) -> int:
    """Lattice points that cover the longest chord of the unit aabb (√3) at `sample_step`."""
    return int(math.ceil(math.sqrt(3.0) / sample_step(field))) + 1


def voxel_index_grid(field: Strivec) -> jax.Array:
    """Dense int32 [res³] grid: index of the active voxel at each cell (x-major), −1 where none."""
    res = field.resolution
    ijk = jnp.clip(jnp.floor(field.position * res).astype(jnp.int32), 0, res - 1)
    flat = (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]
    flat = jnp.where(field.mask, flat, res**3)  # out of range: dropped
    return jnp.full((res**3,), -1, jnp.int32).at[flat].set(jnp.arange(flat.shape[0], dtype=jnp.int32), mode="drop")


def sub_lattice(field: Strivec) -> jax.Array:
    """Per active voxel, the density and colour logits on its D³ factor lattice: f32 [L·D³, 4]
    (row (v·D + x)·D² + y·D + z holds Σ_r coef[v, r] · Π_a trivec[v, r, a, ·]; coef = density, C0 · features_dc).

    The CP formula is a product of per-axis lerps, which equals the trilinear interpolation of this
    separable lattice, so each sample reads 8 rows of 4 instead of the voxel's whole R·(3D + 4) factors."""
    L, R, _, D = field.trivec.shape
    coef = jnp.concatenate([field.density[..., None], SH_C0 * field.features_dc[:, :, 0, :]], -1)  # [L, R, 4]
    tri = field.trivec
    lattice = jnp.einsum("lrx,lry,lrz,lrc->lxyzc", tri[:, :, 0], tri[:, :, 1], tri[:, :, 2], coef)
    return lattice.reshape(L * D**3, 4)


def evaluate_field(lattice: jax.Array, D: int, voxel: jax.Array, local: jax.Array):
    """Density σ [...] and colour [..., 3] at points `local` [..., 3] ∈ [0, 1]³ inside active voxels
    `voxel` int32 [...] (the CP formula of the module docstring), from `sub_lattice(field)` [L·D³, 4]."""
    u = local * D - 0.5
    i0 = jnp.clip(jnp.floor(u), 0, D - 2)
    f = u - i0  # [..., 3], outside [0, 1] at the outer half-cells (extrapolation, as the formula)
    base = ((voxel * D + i0[..., 0].astype(jnp.int32)) * D + i0[..., 1].astype(jnp.int32)) * D + i0[..., 2].astype(jnp.int32)
    corners = jnp.array([(a * D + b) * D + c for a in (0, 1) for b in (0, 1) for c in (0, 1)], jnp.int32)
    rows = lattice[base[..., None] + corners]  # [..., 8, 4]
    wx, wy, wz = (jnp.stack([1.0 - f[..., a], f[..., a]], -1) for a in range(3))
    w = (wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]).reshape(voxel.shape + (8,))
    logits = jnp.einsum("...k,...kc->...c", w, rows)
    return jax.nn.softplus(logits[..., 0]), jax.nn.sigmoid(logits[..., 1:])


def camera_rays(extrinsics: jax.Array, intrinsics: jax.Array, height: int, width: int):
    """Ray origin [3] and unit directions [H·W, 3] in aabb space ([0, 1]³), and the camera-space z per
    unit of ray length [H·W]."""
    R, t = extrinsics[:3, :3], extrinsics[:3, 3]
    origin = -R.T @ t + 0.5
    jj, ii = jnp.meshgrid((jnp.arange(width) + 0.5) / width, (jnp.arange(height) + 0.5) / height)
    x = (jj - intrinsics[0, 2]) / intrinsics[0, 0]
    y = (ii - intrinsics[1, 2]) / intrinsics[1, 1]
    d_cam = jnp.stack([x, y, jnp.ones_like(x)], -1).reshape(-1, 3)
    norm = jnp.linalg.norm(d_cam, axis=-1)
    return origin, (d_cam @ R) / norm[:, None], 1.0 / norm


def _box_interval(origin, dirs, lo=0.0, hi=1.0):
    """Entry/exit distances [N] of rays through the box [lo, hi] (default [0, 1]³; entry clamped at 0;
    exit < entry on a miss)."""
    safe = jnp.where(jnp.abs(dirs) > 1e-12, dirs, 1e-12)
    t_a, t_b = (lo - origin) / safe, (hi - origin) / safe
    t0 = jnp.max(jnp.minimum(t_a, t_b), -1)
    t1 = jnp.min(jnp.maximum(t_a, t_b), -1)
    return jnp.maximum(t0, 0.0), t1


@functools.partial(jax.jit, static_argnames=("height", "width", "samples_per_ray", "sample_capacity", "ray_chunk"))
def render_radiance_field(
    field: Strivec,
    extrinsics: jax.Array,
    intrinsics: jax.Array,
    background: jax.Array,
    *,
    height: int,
    width: int,
    jitter: jax.Array | float = 0.0,
    samples_per_ray: int | None = None,
    sample_capacity: int = 128,
    ray_chunk: int = 1024,
) -> FieldRender:
    """Render one view of one field (a `Strivec` without batch axis: position [L, 3], trivec [L, R, 3, D],
    density [L, R], features_dc [L, R, 1, 3], mask [L]). extrinsics [4, 4], intrinsics [3, 3], background [3],
    jitter: scalar or [H, W] lattice offset in [0, 1) (0: the reference's inference setting)."""
    res = field.resolution
    step = sample_step(field)
    S = samples_per_ray or default_samples_per_ray(field)
    K = min(int(sample_capacity), S)
    grid = voxel_index_grid(field)
    lattice, D = sub_lattice(field), field.trivec.shape[-1]
    # rays are walked only through the active voxels' bounding box (padded by a fraction of a lattice step:
    # the lattice is anchored at the camera, so this clips no occupied point), and chunks of rays that
    # miss it skip the walk and the field altogether
    corner = jnp.floor(field.position * res) / res
    lo = jnp.min(jnp.where(field.mask[:, None], corner, 1.0), 0) - 0.1 * step
    hi = jnp.max(jnp.where(field.mask[:, None], corner + 1.0 / res, 0.0), 0) + 0.1 * step
    origin, dirs, z_per_t = camera_rays(extrinsics, intrinsics, height, width)
    jit_off = jnp.broadcast_to(jnp.asarray(jitter, jnp.float32), (height, width)).reshape(-1)
    n = height * width
    pad = (-n) % ray_chunk
    padded = lambda x: jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((-1, ray_chunk) + x.shape[1:])

    def lookup(d, t):
        """Voxel index int32 [C, M] (−1 where none) and local position [C, M, 3] of the points at
        distances t [C, M] along rays d [C, 3]."""
        p = origin + t[..., None] * d[:, None, :]
        cell = jnp.floor(p * res)
        inside = jnp.all((cell >= 0) & (cell < res), -1)
        ijk = jnp.clip(cell, 0, res - 1).astype(jnp.int32)
        vox = grid[(ijk[..., 0] * res + ijk[..., 1]) * res + ijk[..., 2]]
        return jnp.where(inside, vox, -1), p * res - ijk

    def march(d, jt, zs, live, t0, t1):
        k0 = jnp.ceil(t0 / step - jt)  # first lattice index at or after the entry
        s = jnp.arange(S, dtype=jnp.float32)
        t_all = (k0[:, None] + s + jt[:, None]) * step  # [C, S]
        vox, _ = lookup(d, t_all)
        occupied = (vox >= 0) & (t_all <= t1[:, None]) & live[:, None]
        count = jnp.sum(occupied, -1)
        # sample id of each ray's k-th occupied point: where the running count first reaches k + 1 (S: none)
        ranks = jnp.arange(1, K + 1, dtype=jnp.int32)
        picked = jax.vmap(lambda c: jnp.searchsorted(c, ranks, side="left"))(jnp.cumsum(occupied, -1, dtype=jnp.int32))
        valid = picked < S
        t = (k0[:, None] + picked.astype(jnp.float32) + jt[:, None]) * step
        vox, local = lookup(d, t)
        valid &= vox >= 0
        sigma, rgb = evaluate_field(lattice, D, jnp.maximum(vox, 0), jnp.clip(local, 0.0, 1.0))
        alpha = jnp.where(valid, jnp.minimum(1.0 - jnp.exp(-sigma * step), MAX_ALPHA), 0.0)
        log_t = jnp.log1p(-alpha)
        before = jnp.exp(jnp.cumsum(log_t, -1) - log_t)  # transmittance in front of each sample
        keep = jax.lax.stop_gradient(before) >= STOP_TRANSMITTANCE
        weight = jnp.where(keep, alpha * before, 0.0)
        final_t = jnp.exp(jnp.sum(jnp.where(keep, log_t, 0.0), -1))
        col = jnp.sum(weight[..., None] * rgb, 1)
        dep = jnp.sum(weight * t, -1) * zs
        # a ray cut at the capacity matters only if it is still visible there (past the stop, samples weigh 0)
        cut = (count > K) & (jax.lax.stop_gradient(final_t) >= STOP_TRANSMITTANCE)
        return col, dep, 1.0 - final_t, jnp.max(count), jnp.any(cut)

    @jax.checkpoint
    def chunk(args):
        d, jt, zs, live = args  # [C, 3], [C], [C], [C]
        t0, t1 = _box_interval(origin, d, lo, hi)
        empty = lambda *_: (jnp.zeros((d.shape[0], 3)), jnp.zeros(d.shape[0]), jnp.zeros(d.shape[0]),
                            jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        return jax.lax.cond(jnp.any(live & (t1 > t0)), march, empty, d, jt, zs, live, t0, t1)

    col, dep, acc, counts, cuts = jax.lax.map(chunk, (padded(dirs), padded(jit_off), padded(z_per_t), padded(jnp.ones(n, bool))))
    col, dep, acc = col.reshape(-1, 3)[:n], dep.reshape(-1)[:n], acc.reshape(-1)[:n]
    rgb = col + (1.0 - acc)[:, None] * background
    max_samples = jnp.max(counts).astype(jnp.int32)
    return FieldRender(rgb.reshape(height, width, 3), dep.reshape(height, width), acc.reshape(height, width),
                       jnp.any(cuts), max_samples)
