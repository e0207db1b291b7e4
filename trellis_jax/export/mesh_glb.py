"""Extracted meshes as GLB: textured from the Gaussians (the reference's `to_glb`) or vertex-coloured.

    asset = textured_mesh(vertices, faces, gaussians, simplify=0.95, texture_size=1024, mode="fast")
    save_mesh_glb(path, asset.vertices, asset.faces, uvs=asset.uvs, texture=asset.texture)
    save_mesh_glb(path, vertices, faces, vertex_attrs)        # the fallback without Gaussians

`textured_mesh` runs the steps of docs/reference_facts.md#textured-glb-export: decimate (fast-simplification,
quadric), drop the faces no sphere view ever sees and close small holes (trimesh), UV-unwrap (xatlas) and
bake a base-colour texture from multiview renders of the Gaussians, either by projection ('fast': per texel
the visibility-weighted mean of the views' colours) or by optimisation ('opt': Adam on the texture through
the rasteriser's UV lookups, masked L1 to the renders + total variation, started from the projection).
Texel row r holds v = 1 − (r + ½)/T (glTF's top-left origin, as trimesh writes UVs). The GLB is y-up.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.export.voxels import to_y_up, write_glb

BAKE_MODES = ("fast", "opt")


class TexturedMesh(NamedTuple):
    """vertices [n, 3] (world, z-up), faces int32 [m, 3], uvs [n, 2] in [0, 1], texture uint8 [T, T, 3]."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray


def simplify_mesh(vertices: np.ndarray, faces: np.ndarray, simplify: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation removing about `simplify` (in [0, 1)) of the faces; 0 keeps the mesh."""
    if not 0 <= simplify < 1:
        raise ValueError(f"simplify must be in [0, 1), got {simplify}")
    if simplify == 0:
        return np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    import fast_simplification

    # writable copies: the extension rejects read-only buffers (host views of device arrays)
    v, f = fast_simplification.simplify(np.array(vertices, np.float64, order="C"), np.array(faces, np.int32, order="C"),
                                        target_reduction=simplify)
    return np.asarray(v, np.float64), np.asarray(f, np.int64)


@functools.partial(jax.jit, static_argnames=("resolution", "tile_capacity", "bin_capacity"))
def _raster_view(vertices, faces, face_mask, uvs, extrinsics, intrinsics, *, resolution, tile_capacity, bin_capacity):
    """One camera -> (triangle id [R, R], texture coordinates [R, R, 2], |cos| of view and face normal [R, R],
    overflow [], tile_load [2])."""
    from trellis_jax.render import mesh_raster

    ras = mesh_raster.rasterize_mesh(vertices, faces, face_mask, extrinsics[None], intrinsics[None], height=resolution,
                                     width=resolution, near=0.1, far=100.0, tile_capacity=tile_capacity, bin_capacity=bin_capacity)
    uv = mesh_raster.interpolate(uvs, ras, faces)[0]
    normal = mesh_raster.pixel_face_normals(vertices, faces, ras)[0]
    eye = -extrinsics[:3, :3].T @ extrinsics[:3, 3]
    points = mesh_raster.interpolate(vertices, ras, faces)[0]
    view = eye - points
    cos = jnp.abs(jnp.sum(normal * view, -1)) * jax.lax.rsqrt(jnp.maximum(jnp.sum(view * view, -1), 1e-12))
    return ras.triangle_id[0], uv, jnp.where(ras.mask[0], cos, 0.0), ras.overflow[0], ras.tile_load[0]


def _rasterize(vertices, faces, uvs, extrinsics, intrinsics, resolution, desc=None):
    from tqdm import tqdm

    from trellis_jax.render.turntable import map_mesh_views, padded_mesh

    bar = (lambda views: tqdm(views, desc=desc, unit="view", file=sys.stderr, mininterval=2)) if desc else None
    args = padded_mesh(vertices, faces, (uvs,))
    return map_mesh_views(_raster_view, args, extrinsics, intrinsics, resolution, progress=bar)


def visible_faces(vertices: np.ndarray, faces: np.ndarray, num_views: int = 100, resolution: int = 256) -> np.ndarray:
    """bool [m]: the faces that some pixel of `num_views` sphere views (r = 2, FoV 40°) shows."""
    from trellis_jax.render.cameras import sphere_cameras

    ext, intr = sphere_cameras(num_views)
    seen = np.zeros(len(faces), bool)
    for tri, _, _ in _rasterize(vertices, faces, np.zeros((len(vertices), 2)), ext, intr, resolution):
        ids = np.asarray(tri)
        seen[ids[(ids >= 0) & (ids < len(faces))]] = True
    return seen


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, num_views: int = 100, resolution: int = 256):
    """Drop the faces no view sees (interior and hidden surfaces), then fill the small holes trimesh can close."""
    import trimesh

    keep = visible_faces(vertices, faces, num_views, resolution)
    mesh = trimesh.Trimesh(vertices, faces[keep], process=False)
    mesh.remove_unreferenced_vertices()
    mesh.fill_holes()
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def unwrap_uvs(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts -> (vertices [n', 3] split along seams, faces [m, 3], uvs [n', 2] in [0, 1])."""
    import xatlas

    vmap, indices, uvs = xatlas.parametrize(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32))
    return np.asarray(vertices)[vmap], indices.astype(np.int64), np.asarray(uvs, np.float64)


def _texel_index(uv: jax.Array, size: int) -> jax.Array:
    """Texture coordinates [..., 2] -> flat nearest-texel index (row-major, row 0 at v = 1)."""
    col = jnp.clip(jnp.floor(uv[..., 0] * size), 0, size - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor((1.0 - uv[..., 1]) * size), 0, size - 1).astype(jnp.int32)
    return row * size + col


@functools.partial(jax.jit, static_argnames=("size",))
def _project_view(acc, weight, uv, cos, image, mask, *, size):
    """Add one view's colours [R, R, 3] at its pixels' texels, weighted by |cos| of the surface to the view."""
    w = jnp.where(mask, cos, 0.0).reshape(-1)
    idx = _texel_index(uv, size).reshape(-1)
    acc = acc + jax.ops.segment_sum(image.reshape(-1, 3) * w[:, None], idx, num_segments=size * size)
    return acc, weight + jax.ops.segment_sum(w, idx, num_segments=size * size)


def _fill_empty(texture: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Texels no view reached take the colour of the nearest reached texel (inpainting by nearest neighbour,
    so that bilinear lookups at island borders stay in colour)."""
    from scipy import ndimage

    if not filled.any():
        return texture
    _, (rows, cols) = ndimage.distance_transform_edt(~filled, return_indices=True)
    return texture[rows, cols]


def _bilinear(texture: jax.Array, uv: jax.Array) -> jax.Array:
    """Sample texture [T, T, 3] at uv [..., 2] (texel centres at (k + ½)/T, edges clamped)."""
    size = texture.shape[0]
    x = uv[..., 0] * size - 0.5
    y = (1.0 - uv[..., 1]) * size - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    at = lambda r, c: texture[jnp.clip(r, 0, size - 1).astype(jnp.int32), jnp.clip(c, 0, size - 1).astype(jnp.int32)]
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _bake_loss(texture, uv, mask, image, tv_weight):
    """Masked L1 of the textured view against the render + tv_weight · mean total variation of the texture."""
    m = mask[..., None].astype(jnp.float32)
    l1 = jnp.sum(jnp.abs(_bilinear(texture, uv) - image) * m) / jnp.maximum(jnp.sum(m) * 3, 1.0)
    tv = jnp.mean(jnp.abs(texture[1:] - texture[:-1])) + jnp.mean(jnp.abs(texture[:, 1:] - texture[:, :-1]))
    return l1 + tv_weight * tv


@functools.lru_cache(maxsize=None)
def _opt_step(steps: int, lr: float, tv_weight: float):
    """The jitted Adam step of the 'opt' bake (lr cosine-decayed to lr/1000, betas (0.5, 0.9)), built once per setting."""
    import optax

    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=1e-3), b1=0.5, b2=0.9)

    @jax.jit
    def step(texture, state, uv, mask, image):
        loss, grad = jax.value_and_grad(_bake_loss)(texture, uv, mask, image, tv_weight)
        updates, state = tx.update(grad, state, texture)
        return optax.apply_updates(texture, updates), state, loss

    return tx, step


def bake_texture(vertices, faces, uvs, images: np.ndarray, extrinsics, intrinsics, texture_size: int = 1024,
                 mode: str = "fast", steps: int = 2500, lr: float = 1e-2, tv_weight: float = 0.01, seed: int = 0,
                 progress: bool = True) -> np.ndarray:
    """Texture uint8 [T, T, 3] of a UV-mapped mesh (vertices [n, 3], faces [m, 3], uvs [n, 2]) from views
    images uint8 [V, R, R, 3] taken by cameras [V, 4, 4], [V, 3, 3] on a black background (a pixel is
    appearance where it is non-zero and the mesh covers it). mode 'fast': projection; 'opt': `steps` Adam
    steps, one random view each, from the projection (see the module docstring)."""
    if mode not in BAKE_MODES:
        raise ValueError(f"texture bake mode must be one of {BAKE_MODES}, got {mode!r}")
    images = np.asarray(images)
    resolution = images.shape[1]
    raster = _rasterize(vertices, faces, uvs, extrinsics, intrinsics, resolution, desc="bake: rasterise" if progress else None)
    size = int(texture_size)
    acc, weight = jnp.zeros((size * size, 3)), jnp.zeros((size * size,))
    masks, uv_views = [], []
    for (tri, uv, cos), image in zip(raster, images):
        mask = (tri >= 0) & jnp.asarray(image.any(-1))
        acc, weight = _project_view(acc, weight, uv, cos, jnp.asarray(image, jnp.float32) / 255.0, mask, size=size)
        masks.append(mask)
        uv_views.append(uv)
    weight = np.asarray(weight).reshape(size, size)
    texture = np.asarray(acc).reshape(size, size, 3) / np.maximum(weight, 1e-12)[..., None]
    texture = _fill_empty(texture, weight > 0)
    if mode == "opt":
        from tqdm import tqdm

        tx, step = _opt_step(int(steps), float(lr), float(tv_weight))
        tex = jnp.asarray(texture, jnp.float32)
        state = tx.init(tex)
        order = np.random.default_rng(seed).integers(0, len(images), int(steps))
        bar = tqdm(order, desc="bake: optimise texture", unit="step", file=sys.stderr, mininterval=2, disable=not progress)
        for v in bar:
            tex, state, loss = step(tex, state, uv_views[v], masks[v], jnp.asarray(images[v], jnp.float32) / 255.0)
        texture = np.asarray(tex)
    return (np.clip(texture, 0, 1) * 255).round().astype(np.uint8)


def textured_mesh(vertices, faces, gaussians: dict, *, simplify: float = 0.95, texture_size: int = 1024, mode: str = "fast",
                  fill_holes: bool = True, num_views: int = 100, render_resolution: int = 512, visibility_views: int = 100,
                  steps: int = 2500, progress: bool = True) -> TexturedMesh:
    """One asset's mesh (vertices [n, 3] world z-up, faces [m, 3]) and Gaussians (host dict of one sample)
    -> decimated, cleaned, UV-mapped mesh with a texture baked from `num_views` sphere renders of the
    Gaussians at `render_resolution`² (r = 2, FoV 40°, black background)."""
    from trellis_jax.render.cameras import sphere_cameras
    from trellis_jax.render.preview import render_gaussian_views
    from tqdm import tqdm

    if mode not in BAKE_MODES:
        raise ValueError(f"texture bake mode must be one of {BAKE_MODES}, got {mode!r}")
    v, f = simplify_mesh(vertices, faces, simplify)
    if fill_holes:
        v, f = clean_mesh(v, f, visibility_views, min(render_resolution, 256))
    if len(f) == 0:
        raise ValueError("to_glb: no face of the mesh is visible from outside; nothing to texture")
    v, f, uvs = unwrap_uvs(v, f)
    ext, intr = sphere_cameras(num_views)
    bar = (lambda views: tqdm(views, desc="bake: render Gaussians", unit="view", file=sys.stderr, mininterval=2)) if progress else None
    images = render_gaussian_views(gaussians, ext, intr, render_resolution, bg=(0.0, 0.0, 0.0), progress=bar)
    texture = bake_texture(v, f, uvs, images, ext, intr, texture_size, mode, steps=steps, progress=progress)
    return TexturedMesh(v, f.astype(np.int32), uvs, texture)


def save_mesh_glb(path, vertices: np.ndarray, faces: np.ndarray, vertex_attrs: np.ndarray | None = None,
                  uvs: np.ndarray | None = None, texture: np.ndarray | None = None) -> Path:
    """vertices [V, 3] (world, z-up), faces int [F, 3]; either uvs [V, 2] + texture uint8 [T, T, 3] (glTF PBR
    material: baseColorTexture, white baseColorFactor, roughness 1, metallic 0) or vertex_attrs [V, A≥3]
    (RGB first, in [0, 1]; per-vertex colours) -> GLB with y-up vertices, written atomically."""
    import trimesh
    from PIL import Image

    vertices, faces = np.asarray(vertices, np.float64).reshape(-1, 3), np.asarray(faces, np.int64).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise ValueError(f"{path}: refusing to write an empty mesh ({len(vertices)} vertices, {len(faces)} faces)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{path}: face indices outside [0, {len(vertices)})")
    if (uvs is None) != (texture is None):
        raise ValueError(f"{path}: a textured GLB needs both uvs and a texture")
    mesh = trimesh.Trimesh(to_y_up(vertices), faces, process=False)
    if texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(np.asarray(texture, np.uint8)), baseColorFactor=[255, 255, 255, 255],
            roughnessFactor=1.0, metallicFactor=0.0)
        mesh.visual = trimesh.visual.TextureVisuals(uv=np.asarray(uvs, np.float64), material=material)
    elif vertex_attrs is not None:
        rgb = np.clip(np.asarray(vertex_attrs, np.float64)[:, :3], 0, 1)
        rgba = np.concatenate([rgb, np.ones((len(rgb), 1))], -1)
        mesh.visual.vertex_colors = np.round(rgba * 255).astype(np.uint8)
    return write_glb(path, mesh)
