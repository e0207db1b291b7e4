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

Static shapes: each ray walks `samples_per_ray` lattice points across the aabb (default: enough for the
longest chord, √3), finds each point's voxel in a dense res³ index grid built by scatter from the active
voxels, and keeps its first `sample_capacity` occupied points in order (empty space has σ = 0, so
skipping it is exact). Only those are evaluated. A ray with more occupied points than the capacity sets
`overflow` (its far samples are missing): check it; `max_samples` says what the capacity must be.
Rays are processed in chunks of `ray_chunk` under `jax.checkpoint`, so forward and backward at 512² keep
one chunk's samples in memory.

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
    overflow     bool []          some ray had more occupied samples than `sample_capacity`
    max_samples  int32 []         most occupied samples on one ray (the capacity that view needed)
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


def evaluate_field(field: Strivec, voxel: jax.Array, local: jax.Array):
    """Density σ [...] and colour [..., 3] at points `local` [..., 3] ∈ [0, 1]³ inside active voxels
    `voxel` int32 [...] (the CP formula of the module docstring).

    Each point gathers its voxel's whole parameter row (one contiguous gather, so the backward pass is a
    row scatter-add rather than one scatter per factor entry) and interpolates with dense hat weights."""
    L, R, _, D = field.trivec.shape
    table = jnp.concatenate([field.trivec.reshape(L, -1), field.density, field.features_dc.reshape(L, -1)], -1)
    rows = table[voxel]  # [..., R·3·D + R + 3R]
    tri = rows[..., : R * 3 * D].reshape(voxel.shape + (R, 3, D))
    dens = rows[..., R * 3 * D : R * 3 * D + R]
    fdc = rows[..., R * 3 * D + R :].reshape(voxel.shape + (R, 3))
    u = local * D - 0.5
    i0 = jnp.clip(jnp.floor(u), 0, D - 2)
    frac = (u - i0)[..., None]  # [..., 3, 1]
    d = jnp.arange(D, dtype=u.dtype)
    hat = jnp.where(d == i0[..., None], 1.0 - frac, 0.0) + jnp.where(d == i0[..., None] + 1, frac, 0.0)  # [..., 3, D]
    w = jnp.prod(jnp.einsum("...rad,...ad->...ra", tri, hat), -1)  # [..., R]
    sigma = jax.nn.softplus(jnp.sum(dens * w, -1))
    logits = SH_C0 * jnp.einsum("...r,...rc->...c", w, fdc)
    return sigma, jax.nn.sigmoid(logits)


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


def _aabb_interval(origin, dirs):
    """Entry/exit distances [N] of rays through [0, 1]³ (entry clamped at 0; exit < entry on a miss)."""
    safe = jnp.where(jnp.abs(dirs) > 1e-12, dirs, 1e-12)
    t_a, t_b = (0.0 - origin) / safe, (1.0 - origin) / safe
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

    @jax.checkpoint
    def chunk(args):
        d, jt, zs, live = args  # [C, 3], [C], [C], [C]
        t0, t1 = _aabb_interval(origin, d)
        k0 = jnp.ceil(t0 / step - jt)  # first lattice index at or after the entry
        s = jnp.arange(S, dtype=jnp.float32)
        t_all = (k0[:, None] + s + jt[:, None]) * step  # [C, S]
        vox, _ = lookup(d, t_all)
        occupied = (vox >= 0) & (t_all <= t1[:, None]) & live[:, None]
        count = jnp.sum(occupied, -1)
        slot = jnp.where(occupied, jnp.cumsum(occupied, -1) - 1, K)
        rows = jnp.broadcast_to(jnp.arange(d.shape[0])[:, None], slot.shape)
        picked = jnp.full((d.shape[0], K), S, jnp.int32).at[rows, slot].set(
            jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), slot.shape), mode="drop")  # [C, K] sample ids, S = none
        valid = picked < S
        t = (k0[:, None] + picked.astype(jnp.float32) + jt[:, None]) * step
        vox, local = lookup(d, t)
        valid &= vox >= 0
        sigma, rgb = evaluate_field(field, jnp.maximum(vox, 0), jnp.clip(local, 0.0, 1.0))
        alpha = jnp.where(valid, jnp.minimum(1.0 - jnp.exp(-sigma * step), MAX_ALPHA), 0.0)
        log_t = jnp.log1p(-alpha)
        before = jnp.exp(jnp.cumsum(log_t, -1) - log_t)  # transmittance in front of each sample
        keep = jax.lax.stop_gradient(before) >= STOP_TRANSMITTANCE
        weight = jnp.where(keep, alpha * before, 0.0)
        final_t = jnp.exp(jnp.sum(jnp.where(keep, log_t, 0.0), -1))
        col = jnp.sum(weight[..., None] * rgb, 1)
        dep = jnp.sum(weight * t, -1) * zs
        return col, dep, 1.0 - final_t, jnp.max(count)

    col, dep, acc, counts = jax.lax.map(chunk, (padded(dirs), padded(jit_off), padded(z_per_t), padded(jnp.ones(n, bool))))
    col, dep, acc = col.reshape(-1, 3)[:n], dep.reshape(-1)[:n], acc.reshape(-1)[:n]
    rgb = col + (1.0 - acc)[:, None] * background
    max_samples = jnp.max(counts).astype(jnp.int32)
    return FieldRender(rgb.reshape(height, width, 3), dep.reshape(height, width), acc.reshape(height, width),
                       max_samples > K, max_samples)
