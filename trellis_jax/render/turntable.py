"""Turntable videos of a generated asset: the reference's orbit, every decoded representation side by side, as mp4.

Camera path (the reference's `render_video`): over N frames yaw = linspace(0, 2π, N) and
pitch = 0.25 + 0.5·sin(linspace(0, 2π, N)) radians, radius 2, vertical FoV 40°, looking at the origin
with +z up. Panels, left to right, for what is given: Gaussian colour (the JAX splatter), radiance-field
colour (the JAX volume renderer), mesh vertex colour (when the mesh has colour attributes) and mesh
world-space face normals mapped to [0, 1] (the JAX rasteriser, silhouettes antialiased).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from trellis_jax.atomic import atomic_write
from trellis_jax.render import mesh_raster
from trellis_jax.render.cameras import orbit_cameras
from trellis_jax.render.preview import render_gaussian_views
from trellis_jax.render.radiance_field import render_radiance_field
from trellis_jax.representations.strivec import Strivec
from trellis_jax.sparse.tensor import CapacityError


def turntable_cameras(num_frames: int, radius: float = 2.0, fov_deg: float = 40.0):
    """(extrinsics [N, 4, 4], intrinsics [N, 3, 3]) of the reference's video orbit."""
    s = np.linspace(0.0, 2 * np.pi, num_frames)
    return orbit_cameras(s, 0.25 + 0.5 * np.sin(s), radius, fov_deg)


@functools.partial(jax.jit, static_argnames=("resolution", "tile_capacity", "bin_capacity"))
def _shade_mesh_view(vertices, faces, face_mask, colours, background, extrinsics, intrinsics, *, resolution, tile_capacity, bin_capacity):
    """One camera -> (colour [R, R, 3], normal [R, R, 3], overflow [], tile_load [2]), silhouettes antialiased."""
    ras = mesh_raster.rasterize_mesh(vertices, faces, face_mask, extrinsics[None], intrinsics[None], height=resolution,
                                     width=resolution, near=1.0, far=100.0, tile_capacity=tile_capacity,
                                     bin_capacity=bin_capacity)
    normal = mesh_raster.pixel_face_normals(vertices, faces, ras) * 0.5 + 0.5
    colour = mesh_raster.interpolate(colours, ras, faces)
    m = ras.mask[..., None]
    img = jnp.concatenate([jnp.where(m, colour, background), jnp.where(m, normal, background)], -1)
    img = mesh_raster.antialias(img, ras, faces)[0]
    return img[..., :3], img[..., 3:], ras.overflow[0], ras.tile_load[0]


def _pow2(n: int, floor: int) -> int:
    return max(floor, 1 << int(np.ceil(np.log2(max(n, 1)))))


def padded_mesh(vertices, faces, vertex_values=()):
    """Host mesh -> device (vertices [V', 3], faces [F', 3], face_mask [F'], *values [V', ·]) padded to powers
    of two (few compiled shapes); padding faces are masked out, padding values are 0."""
    n, m = len(vertices), len(faces)
    vcap, fcap = _pow2(n, 1024), _pow2(m, 1024)
    pad = lambda a, cap: np.concatenate([a, np.zeros((cap - len(a),) + a.shape[1:], a.dtype)])
    return (jnp.asarray(pad(np.asarray(vertices, np.float32), vcap)), jnp.asarray(pad(np.asarray(faces, np.int32), fcap)),
            jnp.asarray(np.arange(fcap) < m), *(jnp.asarray(pad(np.asarray(a, np.float32), vcap)) for a in vertex_values))


def map_mesh_views(view_fn, args, extrinsics, intrinsics, resolution: int, tile_capacity: int = 256, progress=None) -> list:
    """Run a jitted per-camera mesh function `view_fn(*args, E, K, resolution=, tile_capacity=, bin_capacity=)
    -> (*outputs, overflow, tile_load)` over the cameras; returns each view's outputs. A view that overflows
    the tile capacities is run again with capacities raised to the load it reported (kept for later views)."""
    results = []
    views = list(zip(extrinsics, intrinsics))
    cap, bins = tile_capacity, None  # None: the rasteriser's default bin capacity
    for E, K in (progress(views) if progress else views):
        for attempt in range(2):
            *outputs, overflow, load = view_fn(*args, jnp.asarray(E), jnp.asarray(K), resolution=resolution,
                                               tile_capacity=cap, bin_capacity=bins)
            if not bool(overflow):
                break
            if attempt:
                raise CapacityError(f"mesh rasterisation overflowed tile capacities ({cap}, {bins}) at {resolution}²")
            load = np.asarray(load)
            cap, bins = max(cap, _pow2(int(load[0]), 1)), max(bins or 0, _pow2(int(load[1]), 1))
        results.append(outputs)
    return results


def render_mesh_views(vertices, faces, vertex_attrs, extrinsics, intrinsics, resolution: int, bg=(0.0, 0.0, 0.0),
                      tile_capacity: int = 256, progress=None):
    """Host mesh (vertices [n, 3], faces [m, 3], vertex_attrs [n, A] with RGB first, A may be 0) and
    cameras -> uint8 (colour [V, R, R, 3] or None without colour, normal [V, R, R, 3])."""
    has_colour = vertex_attrs is not None and np.shape(vertex_attrs)[-1] >= 3
    col = np.asarray(vertex_attrs, np.float32)[:, :3] if has_colour else np.zeros((len(vertices), 3), np.float32)
    args = (*padded_mesh(vertices, faces, (col,)), jnp.asarray(bg, jnp.float32))
    views = map_mesh_views(_shade_mesh_view, args, extrinsics, intrinsics, resolution, tile_capacity, progress)
    to_u8 = lambda frames: (np.clip(np.stack([np.asarray(f) for f in frames]), 0, 1) * 255).astype(np.uint8)
    return (to_u8([c for c, _ in views]) if has_colour else None), to_u8([nrm for _, nrm in views])


def render_field_views(field: Strivec, extrinsics, intrinsics, resolution: int, bg=(0.0, 0.0, 0.0),
                       sample_capacity: int = 128, ray_chunk: int = 4096, progress=None) -> np.ndarray:
    """One radiance field (a `Strivec` without batch axis: position [L, 3], ..., mask [L]) and cameras ->
    uint8 colour [V, R, R, 3]. Voxels are padded to a power of two (few compiled shapes). A view whose
    rays hold more occupied samples than `sample_capacity` is rendered again with the capacity it needed
    (kept for later views), so no sample is dropped; a view still over it is a CapacityError."""
    L = int(field.mask.shape[0])
    cap = _pow2(L, 1024)
    pad = lambda a: jnp.concatenate([jnp.asarray(a), jnp.zeros((cap - L,) + a.shape[1:], a.dtype)])
    padded = jax.tree.map(pad, field)
    background = jnp.asarray(bg, jnp.float32)
    frames, k = [], int(sample_capacity)
    views = list(zip(extrinsics, intrinsics))
    for E, K in (progress(views) if progress else views):
        for attempt in range(2):
            r = render_radiance_field(padded, jnp.asarray(E, jnp.float32), jnp.asarray(K, jnp.float32), background,
                                      height=resolution, width=resolution, sample_capacity=k, ray_chunk=ray_chunk)
            if not bool(r.overflow):
                break
            if attempt:
                raise CapacityError(f"radiance-field rays still hold more than {k} occupied samples at {resolution}²")
            k = _pow2(int(r.max_samples), k)
        frames.append((np.clip(np.asarray(r.rgb), 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def turntable_frames(gaussians: dict | None = None, mesh: tuple | None = None, num_frames: int = 120,
                     resolution: int = 512, radius: float = 2.0, fov_deg: float = 40.0, bg=(0.0, 0.0, 0.0),
                     radiance_field: Strivec | None = None) -> np.ndarray:
    """uint8 [N, R, P·R, 3]: P panels side by side (see the module docstring). gaussians: host dict
    (xyz, features_dc, scaling, rotation, opacity) of one sample; mesh: (vertices, faces, vertex_attrs)
    of one sample, e.g. `Mesh.sample(b)`; radiance_field: one sample's `Strivec` (no batch axis)."""
    if gaussians is None and mesh is None and radiance_field is None:
        raise ValueError("turntable: give gaussians, a radiance field and/or a mesh")
    ext, intr = turntable_cameras(num_frames, radius, fov_deg)
    bar = lambda what: (lambda views: tqdm(views, desc=f"turntable {what}", unit="frame", file=sys.stderr, mininterval=2))
    panels = []
    if gaussians is not None:
        panels.append(render_gaussian_views(gaussians, ext, intr, resolution, bg, progress=bar("gaussians")))
    if radiance_field is not None:
        panels.append(render_field_views(radiance_field, ext, intr, resolution, bg, progress=bar("radiance field")))
    if mesh is not None:
        colour, normal = render_mesh_views(*mesh, ext, intr, resolution, bg, progress=bar("mesh"))
        panels += [colour, normal] if colour is not None else [normal]
    return np.concatenate(panels, axis=2)


def write_video(path, frames: np.ndarray, fps: int = 15) -> Path:
    """Write uint8 frames [N, H, W, 3] as H.264 mp4, atomically (`trellis_jax.atomic`)."""
    import imageio.v2 as imageio

    def write(tmp):
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=2, ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(f)

    return atomic_write(Path(path).with_suffix(Path(path).suffix or ".mp4"), write, keep_suffix=True)


def render_turntable(path, gaussians: dict | None = None, mesh: tuple | None = None, num_frames: int = 120,
                     fps: int = 15, resolution: int = 512, bg=(0.0, 0.0, 0.0), radiance_field: Strivec | None = None) -> Path:
    """Render the turntable (`turntable_frames`) and write it to `path` as mp4 (the demo's 120 frames at 15 fps)."""
    return write_video(path, turntable_frames(gaussians, mesh, num_frames, resolution, bg=bg, radiance_field=radiance_field), fps)
