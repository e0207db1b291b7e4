"""Differentiable triangle-mesh rasterisation in pure JAX, with static shapes.

Three steps, split like nvdiffrast's rasterize / interpolate / antialias (the reference's mesh renderer):

`rasterize_mesh` finds, for each pixel of each camera, the visible triangle (id, −1 where none), its
perspective-correct barycentrics and the camera-space depth. Visibility is discrete and is searched
without gradients; the barycentrics and depth are then recomputed from the chosen triangle's vertex
positions, so they (and everything interpolated from them) are differentiable in the vertices.

Memory: no [pixels, faces] array is built. The image is cut into `tile_size`² tiles; every face's
screen bounding box is expanded into (tile, face) pairs (at most `bin_capacity`), sorted by tile, and
each tile keeps its first `tile_capacity` faces. The depth test then costs [tiles, tile_size², tile_capacity],
evaluated over chunks of tiles. When either capacity is too small the camera's `overflow` flag is set
(the image may miss triangles there): check it, as with every other capacity in the package;
`tile_load` says what the capacities must be to render that camera exactly.

`antialias` gives silhouettes a gradient, in the spirit of nvdiffrast's antialias: for every pair of
horizontally or vertically adjacent pixels where one is covered and the other is background, it finds
where the covered pixel's triangle edge crosses the segment between the two pixel centres (t ∈ [0, 1]
from the covered centre) and blends the pair's values by how far that crossing lies from the midpoint:
the outer pixel takes (t − ½) of the inner one's value when t > ½, the inner pixel takes (½ − t) of the
outer one's value when t < ½. Between coverage changes this is smooth in the vertex positions, and
the gradient reaches the edge's vertices through t; the antialiased mask then integrates to about the
triangle's area. When a pixel centre crosses an edge the value is continuous if a 4-neighbour pair
spans the moving edge, and jumps otherwise (near corners, for instance): as with any pixel-pair scheme
the gradient is that of the smooth part. Occlusion edges inside the object (a triangle in front of
another) are not antialiased.

Conventions (as `cameras.py`): OpenCV world→camera extrinsics [C, 4, 4], normalised intrinsics
[C, 3, 3]; pixel (i, j) has its centre at image coordinate (j + ½, i + ½) · (1/W, 1/H). Triangles with
a vertex nearer than `near` (or entirely beyond `far`) are dropped rather than clipped. Both facing
directions are drawn (no back-face culling).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trellis_jax.render.tiles import bin_boxes


class Raster(NamedTuple):
    """Per-pixel rasterisation of C cameras at H×W.

    triangle_id   int32 [C, H, W]      visible face index, −1 for background
    barycentrics  f32   [C, H, W, 3]   perspective-correct, 0 for background
    depth         f32   [C, H, W]      camera-space z, 0 for background
    mask          bool  [C, H, W]      covered pixels
    screen        f32   [C, V, 2]      vertex positions in pixels (x right, y down), used by `antialias`
    overflow      bool  [C]            a tile or bin capacity was too small for that camera
    tile_load     int32 [C, 2]         (most faces in one tile, (tile, face) pairs): the capacities that camera needed
    """

    triangle_id: jax.Array
    barycentrics: jax.Array
    depth: jax.Array
    mask: jax.Array
    screen: jax.Array
    overflow: jax.Array
    tile_load: jax.Array


def project_vertices(vertices: jax.Array, extrinsics: jax.Array, intrinsics: jax.Array, height: int, width: int):
    """vertices [V, 3] world -> (screen [C, V, 2] in pixels, depth z [C, V]) for cameras [C, 4, 4], [C, 3, 3]."""
    cam = jnp.einsum("cij,vj->cvi", extrinsics[:, :3, :3], vertices) + extrinsics[:, None, :3, 3]
    z = cam[..., 2]
    zs = jnp.where(z > 1e-8, z, 1e-8)
    u = intrinsics[:, None, 0, 0] * width * cam[..., 0] / zs + intrinsics[:, None, 0, 2] * width
    v = intrinsics[:, None, 1, 1] * height * cam[..., 1] / zs + intrinsics[:, None, 1, 2] * height
    return jnp.stack([u, v], -1), z


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


_UNIT_TRIANGLE = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))


def _where_covered(covered: jax.Array, tri: jax.Array) -> jax.Array:
    """tri [..., 3, 2] where `covered` [...], a fixed unit triangle elsewhere: a background pixel's
    stand-in face (face 0) may be degenerate, and its barycentrics' huge partials must not meet the
    zero cotangent of the masked result (inf · 0 = NaN in the gradient)."""
    return jnp.where(covered[..., None, None], tri, jnp.asarray(_UNIT_TRIANGLE, tri.dtype))


def _screen_barycentrics(tri: jax.Array, p: jax.Array) -> jax.Array:
    """Screen-space barycentrics of points p [..., 2] in triangles tri [..., 3, 2] (affine in p; all ≥ 0
    inside for either winding)."""
    v0, v1, v2 = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    area = _cross2(v1 - v0, v2 - v0)
    area = jnp.where(jnp.abs(area) > 1e-20, area, 1e-20)
    b0 = _cross2(v1 - p, v2 - p)
    b1 = _cross2(v2 - p, v0 - p)
    b2 = _cross2(v0 - p, v1 - p)
    return jnp.stack([b0, b1, b2], -1) / area[..., None]


def _bin_faces(tri_uv, valid, height_p, width_p, tile_size, tile_capacity, bin_capacity):
    """Candidate faces per tile: int32 [tiles, tile_capacity] (−1 = empty), an overflow flag and the load
    int32 [2] (most faces in a tile, total pairs)."""
    bins = bin_boxes(tri_uv.min(1), tri_uv.max(1), valid, height_p, width_p, tile_size, tile_capacity, bin_capacity)
    load = jnp.stack([jnp.max(bins.count), bins.pairs])
    overflow = (bins.pairs > bin_capacity) | (load[0] > tile_capacity)
    return bins.candidates, overflow, load


def _visible_faces(cand, tri_uv, tri_invz, height_p, width_p, tile_size, tile_chunk):
    """Depth test inside each tile -> nearest covering face per pixel, int32 [H_p, W_p] (−1 = none)."""
    ntx, nty = width_p // tile_size, height_p // tile_size
    num_tiles = ntx * nty
    off = jnp.arange(tile_size) + 0.5
    local = jnp.stack(jnp.broadcast_arrays(off[None, :], off[:, None]), -1).reshape(-1, 2)  # [T², 2] (x, y)

    def tiles_block(block):
        tile_ids, c = block  # [B], [B, K]
        origin = jnp.stack([tile_ids % ntx, tile_ids // ntx], -1).astype(jnp.float32) * tile_size
        p = origin[:, None, :] + local[None]  # [B, T², 2]
        fid = jnp.maximum(c, 0)
        b = _screen_barycentrics(tri_uv[fid][:, None], p[:, :, None])  # [B, T², K, 3]
        inside = jnp.all(b >= 0, -1) & (c >= 0)[:, None, :]
        inv_depth = jnp.sum(b * tri_invz[fid][:, None], -1)
        depth = jnp.where(inside & (inv_depth > 0), 1.0 / jnp.where(inv_depth > 0, inv_depth, 1.0), jnp.inf)
        best = jnp.argmin(depth, -1)  # [B, T²]
        hit = jnp.isfinite(jnp.min(depth, -1))
        return jnp.where(hit, jnp.take_along_axis(c, best, -1), -1)

    pad = (-num_tiles) % tile_chunk
    tile_ids = jnp.arange(num_tiles + pad)
    cand = jnp.concatenate([cand, jnp.full((pad, cand.shape[1]), -1, cand.dtype)])
    ids = jax.lax.map(tiles_block, (tile_ids.reshape(-1, tile_chunk), cand.reshape(-1, tile_chunk, cand.shape[1])))
    ids = ids.reshape(-1, tile_size * tile_size)[:num_tiles].reshape(nty, ntx, tile_size, tile_size)
    return ids.transpose(0, 2, 1, 3).reshape(height_p, width_p)


@functools.partial(
    jax.jit, static_argnames=("height", "width", "near", "far", "tile_size", "tile_capacity", "bin_capacity", "tile_chunk")
)
def rasterize_mesh(
    vertices: jax.Array,
    faces: jax.Array,
    face_mask: jax.Array,
    extrinsics: jax.Array,
    intrinsics: jax.Array,
    *,
    height: int,
    width: int,
    near: float = 0.1,
    far: float = 100.0,
    tile_size: int = 4,
    tile_capacity: int = 256,
    bin_capacity: int | None = None,
    tile_chunk: int = 256,
) -> Raster:
    """Rasterise one mesh (vertices [V, 3] f32 world, faces [F, 3] int32, face_mask bool [F]) into C cameras
    (extrinsics [C, 4, 4], intrinsics [C, 3, 3]). `bin_capacity` bounds the (tile, face) pairs; by default
    4·F + 16·tiles. Returns a `Raster` (see there for shapes)."""
    tile_size = int(tile_size)
    height_p = -(-height // tile_size) * tile_size
    width_p = -(-width // tile_size) * tile_size
    num_tiles = (height_p // tile_size) * (width_p // tile_size)
    if bin_capacity is None:
        bin_capacity = 4 * faces.shape[0] + 16 * num_tiles
    screen, z = project_vertices(vertices, extrinsics, intrinsics, height, width)  # [C, V, 2], [C, V]

    def one_camera(args):
        uv, zc = jax.lax.stop_gradient(args)
        tri_uv, tri_z = uv[faces], zc[faces]  # [F, 3, 2], [F, 3]
        area = _cross2(tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0])
        valid = face_mask & jnp.all(tri_z > near, -1) & jnp.any(tri_z < far, -1) & (jnp.abs(area) > 1e-12)
        cand, overflow, load = _bin_faces(tri_uv, valid, height_p, width_p, tile_size, tile_capacity, bin_capacity)
        ids = _visible_faces(cand, tri_uv, 1.0 / jnp.maximum(tri_z, near), height_p, width_p, tile_size, tile_chunk)
        return ids[:height, :width], overflow, load

    tri_id, overflow, load = jax.lax.map(one_camera, (screen, z))
    mask = tri_id >= 0
    # differentiable part: barycentrics and depth of the chosen triangle from its (projected) vertices
    fid = jnp.maximum(tri_id, 0)
    vidx = faces[fid]  # [C, H, W, 3]
    cams = jnp.arange(screen.shape[0])[:, None, None, None]
    tri_uv = _where_covered(mask, screen[cams, vidx])  # [C, H, W, 3, 2]
    tri_z = z[cams, vidx]  # [C, H, W, 3]
    jj, ii = jnp.meshgrid(jnp.arange(width) + 0.5, jnp.arange(height) + 0.5)
    p = jnp.stack([jj, ii], -1)[None]
    b = _screen_barycentrics(tri_uv, p)
    w = b / jnp.where(mask[..., None], tri_z, 1.0)
    inv_depth = jnp.sum(w, -1, keepdims=True)
    inv_depth = jnp.where(mask[..., None], inv_depth, 1.0)
    bary = jnp.where(mask[..., None], w / inv_depth, 0.0)
    depth = jnp.where(mask, 1.0 / inv_depth[..., 0], 0.0)
    return Raster(tri_id, bary, depth, mask, screen, overflow, load)


def interpolate(attrs: jax.Array, raster: Raster, faces: jax.Array) -> jax.Array:
    """Vertex attributes [V, A] -> per-pixel [C, H, W, A] (0 for background)."""
    vidx = faces[jnp.maximum(raster.triangle_id, 0)]  # [C, H, W, 3]
    return jnp.einsum("chwk,chwka->chwa", raster.barycentrics, attrs[vidx])


def _unit(x: jax.Array) -> jax.Array:
    """x / |x| along the last axis, with a finite gradient at 0 (degenerate or padding faces)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    """Unit normals [F, 3] of the faces, right-handed in the vertex order ((v1 − v0) × (v2 − v0))."""
    tri = vertices[faces]
    return _unit(jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))


def vertex_normals(vertices: jax.Array, faces: jax.Array, face_mask: jax.Array) -> jax.Array:
    """Area-weighted unit vertex normals [V, 3] from the valid faces."""
    tri = vertices[faces]
    n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * face_mask[:, None]
    acc = jax.ops.segment_sum(jnp.repeat(n, 3, axis=0), faces.reshape(-1), num_segments=vertices.shape[0])
    return _unit(acc)


def pixel_face_normals(vertices: jax.Array, faces: jax.Array, raster: Raster) -> jax.Array:
    """World-space face normal of the visible triangle per pixel [C, H, W, 3] (0 for background)."""
    n = face_normals(vertices, faces)[jnp.maximum(raster.triangle_id, 0)]
    return jnp.where(raster.mask[..., None], n, 0.0)


def camera_facing_normal_map(vertices: jax.Array, faces: jax.Array, raster: Raster, extrinsics: jax.Array) -> jax.Array:
    """Normal map [C, H, W, 3] in [0, 1]: the visible face's world normal, flipped to face camera c
    (extrinsics [C, 4, 4]), mapped by (n + 1) / 2; 0 for background. The convention of the dataset's
    normal renders (`data_pipeline.render`) and of the mesh-decoder targets."""
    n = pixel_face_normals(vertices, faces, raster)
    origin = -jnp.einsum("cji,cj->ci", extrinsics[:, :3, :3], extrinsics[:, :3, 3])  # camera centres [C, 3]
    view = interpolate(vertices, raster, faces) - origin[:, None, None, :]
    n = jnp.where(jnp.sum(n * view, -1, keepdims=True) > 0, -n, n)
    return jnp.where(raster.mask[..., None], (n + 1) / 2, 0.0)


def antialias(image: jax.Array, raster: Raster, faces: jax.Array) -> jax.Array:
    """Silhouette antialiasing (see the module docstring) of image [C, H, W, D] rendered with `raster`;
    differentiable in the image and, through the silhouette edges, in the vertex positions."""
    fid = jnp.maximum(raster.triangle_id, 0)
    tri = _where_covered(raster.mask, raster.screen[jnp.arange(fid.shape[0])[:, None, None, None], faces[fid]])  # [C, H, W, 3, 2]
    height, width = fid.shape[1:]
    jj, ii = jnp.meshgrid(jnp.arange(width) + 0.5, jnp.arange(height) + 0.5)
    centre = jnp.stack([jj, ii], -1)[None]  # [1, H, W, 2]
    out = image
    for axis in (1, 2):  # vertical pairs, then horizontal pairs
        n = fid.shape[axis]
        a = lambda x: jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)
        b = lambda x: jax.lax.slice_in_dim(x, 1, n, axis=axis)
        cov_a, cov_b = a(raster.mask), b(raster.mask)
        edge = cov_a != cov_b
        inner_tri = jnp.where(cov_a[..., None, None], a(tri), b(tri))
        inner_p = jnp.where(cov_a[..., None], a(centre), b(centre))
        outer_p = jnp.where(cov_a[..., None], b(centre), a(centre))
        bi = _screen_barycentrics(inner_tri, inner_p)
        bo = _screen_barycentrics(inner_tri, outer_p)
        leaving = bo < 0
        t = jnp.where(leaving, bi / jnp.where(leaving, bi - bo, 1.0), 2.0)
        t = jnp.clip(jnp.min(t, -1), 0.0, 1.0)[..., None]
        val_in = jnp.where(cov_a[..., None], a(image), b(image))
        val_out = jnp.where(cov_a[..., None], b(image), a(image))
        to_out = jnp.where(edge[..., None] & (t > 0.5), (t - 0.5) * (val_in - val_out), 0.0)
        to_in = jnp.where(edge[..., None] & (t < 0.5), (0.5 - t) * (val_out - val_in), 0.0)
        delta_a = jnp.where(cov_a[..., None], to_in, to_out)
        delta_b = jnp.where(cov_a[..., None], to_out, to_in)
        pad_a = [(0, 0)] * image.ndim
        pad_b = [(0, 0)] * image.ndim
        pad_a[axis], pad_b[axis] = (0, 1), (1, 0)
        out = out + jnp.pad(delta_a, pad_a) + jnp.pad(delta_b, pad_b)
    return out
