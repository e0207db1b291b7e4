"""FlexiCubes on a sparse cube table (see `sparse_grid.CubeGrid`), inference or training split.

Per surface cube (corner signs differ): the sign case picks the cube's dual vertices and the edges each
one averages (`cube_tables`), ambiguous faces shared by two checked cases are resolved jointly, and
every dual vertex is the β-weighted mean of its edges' α-weighted zero crossings (colours alike). Each
grid edge with a sign change and four cubes around it gives a quad (q0, q1, q2, q3) of their dual
vertices, wound so that it faces the positive side, and triangulated
(docs/reference_facts.md#flexicubes-quad-split):

  inference  two triangles along the diagonal of larger γ product (γ0γ2 vs γ1γ3)
  training   a centre vertex c = (γ0γ2·(q0+q2)/2 + γ1γ3·(q1+q3)/2) / (γ0γ2 + γ1γ3 + 1e-8) (colours alike)
             and the fan (q0 q1 c), (q1 q2 c), (q2 q3 c), (q3 q0 c): the surface, hence the renders,
             depend smoothly on γ, which the inference split only uses in a discrete comparison

Results stay in static slots: dual vertex (k, g) is slot 4k + g, and cube k owns the quads of the
three grid edges leaving its origin corner (faces [K, 3, 2, 3], two triangles per quad; training:
centre vertex of quad (k, a) in slot 4K + 3k + a, faces [K, 3, 4, 3]).
Differentiable in the positions, sdf, weights and colours; the topology (signs) is not.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from trellis_jax.representations.mesh.cube_tables import (
    CHECK, EDGE_IN_NEIGHBOUR, EDGES, GROUP_MEMBERS, ORIGIN_EDGES, PERPENDICULAR, QUAD_CUBE_OFFSETS)
from trellis_jax.representations.mesh.sparse_grid import SENTINEL, CubeGrid, grid_key, lookup

MAX_VD = 4  # dual vertices per cube, at most


@struct.dataclass
class DualMesh:
    """Slots of one sample: vertices [4K, 3], colours [4K, C], vertex_mask [4K], faces [3K·2, 3]
    (indices of vertex slots), face_mask [3K·2]; with the training split vertices/colours/vertex_mask
    have 3K quad-centre slots appended ([7K, ·]) and faces/face_mask are [3K·4, ·]. For the training
    regulariser L_dev (dual vertices only): deviation [4K] sums,
    over each dual vertex's edges, |distance to the edge's zero crossing − the vertex's mean distance|,
    and num_edges [4K] counts those edges (L_dev = Σ deviation / Σ num_edges)."""

    vertices: jax.Array
    colors: jax.Array
    vertex_mask: jax.Array
    faces: jax.Array
    face_mask: jax.Array
    deviation: jax.Array
    num_edges: jax.Array


def normalized_weights(weights: jax.Array, weight_scale: float = 0.99):
    """Raw weights [K, 21] -> β [K, 12], α [K, 8] in (0.01, 1.99) and γ [K] in (0.005, 0.995)."""
    beta = jnp.tanh(weights[:, :12]) * weight_scale + 1
    alpha = jnp.tanh(weights[:, 12:20]) * weight_scale + 1
    gamma = jax.nn.sigmoid(weights[:, 20]) * weight_scale + (1 - weight_scale) / 2
    return beta, alpha, gamma


def case_ids(grid: CubeGrid, negative: jax.Array, surface: jax.Array) -> jax.Array:
    """Sign case per cube [K] (bit j = corner j negative), with jointly resolved ambiguous faces."""
    case = jnp.sum(negative.astype(jnp.int32) << jnp.arange(8, dtype=jnp.int32), -1)
    check = jnp.asarray(CHECK)[case]
    checked = surface & (check[:, 0] == 1)
    adj = grid.coords + check[:, 1:4]
    inside = jnp.all((adj >= 0) & (adj < grid.resolution), -1)
    idx, found = lookup(grid.keys, jnp.where(checked & inside, grid_key(adj, grid.resolution), SENTINEL))
    invert = checked & found & checked[idx]
    return jnp.where(invert, check[:, 4], case)


def dual_mesh(grid: CubeGrid, weight_scale: float = 0.99, training: bool = False) -> DualMesh:
    """The cube table's mesh in static slots; `training` selects the γ-weighted centre-vertex split
    (4 triangles per quad, as the reference trains) instead of the inference split (2 per quad)."""
    K = grid.keys.shape[0]
    x = grid.vertex_positions()  # [K, 8, 3]
    s = grid.sdf
    color = jax.nn.sigmoid(grid.color)  # [K, 8, C]
    negative = s < 0
    n_neg = jnp.sum(negative, -1)
    surface = grid.valid & (n_neg > 0) & (n_neg < 8)
    beta, alpha, gamma = normalized_weights(grid.weights, weight_scale)
    case = case_ids(grid, negative, surface)

    # Zero crossing of every cube edge [K, 12, ·], with the cube's α at the two corners.
    ea, eb = EDGES[:, 0], EDGES[:, 1]
    wa, wb = s[:, ea] * alpha[:, ea], s[:, eb] * alpha[:, eb]
    denom = jnp.where(negative[:, ea] != negative[:, eb], wb - wa, 1.0)[..., None]
    crossing = (x[:, ea] * wb[..., None] - x[:, eb] * wa[..., None]) / denom
    col = (color[:, ea] * wb[..., None] - color[:, eb] * wa[..., None]) / denom
    # Dual vertices: the β-weighted mean of the crossings of their edge groups.
    member = jnp.asarray(GROUP_MEMBERS)[case] & surface[:, None, None]  # [K, 4, 12]
    wm = jnp.where(member, beta[:, None, :], 0.0)
    bsum = jnp.sum(wm, -1, keepdims=True)
    vd_mask = jnp.any(member, -1)
    bsafe = jnp.where(vd_mask[..., None], bsum, 1.0)
    vd = jnp.einsum("kge,ked->kgd", wm, crossing, precision="highest") / bsafe
    vd_color = jnp.einsum("kge,ked->kgd", wm, col, precision="highest") / bsafe
    # L_dev: spread of each dual vertex's distances to its edges' crossings.
    diff = crossing[:, None, :, :] - vd[:, :, None, :]
    dist = jnp.sqrt(jnp.sum(diff * diff, -1) + 1e-20)  # [K, 4, 12]; finite gradient where a vertex has one edge
    n_edges = jnp.sum(member, -1)
    mean_dist = jnp.sum(jnp.where(member, dist, 0.0), -1) / jnp.maximum(n_edges, 1)
    deviation = jnp.sum(jnp.where(member, jnp.abs(dist - mean_dist[..., None]), 0.0), -1)
    # The dual vertex slot each cube edge belongs to [K, 12] (-1 if none).
    edge_vd = jnp.where(jnp.any(member, 1), jnp.argmax(member, 1), -1)

    # Quads: cube k owns the grid edges leaving its origin corner, one per axis; the 4 cubes around
    # each (itself included) are found by key, in increasing key order as the reference lists them.
    first, second = EDGES[ORIGIN_EDGES, 0], EDGES[ORIGIN_EDGES, 1]  # [3]
    cut = negative[:, first] != negative[:, second]  # [K, 3]
    ok = surface[:, None] & cut & jnp.all(grid.coords[:, PERPENDICULAR] >= 1, -1)
    keys = jnp.where(ok[..., None], grid_key(grid.coords[:, None, None, :] + jnp.asarray(QUAD_CUBE_OFFSETS)[None], grid.resolution), SENTINEL)
    idx, found = lookup(grid.keys, keys)  # [K, 3, 4]
    g = edge_vd[idx, jnp.asarray(EDGE_IN_NEIGHBOUR)[None]]
    ok = ok & jnp.all(found & (g >= 0), -1)
    slots, gam = idx * MAX_VD + g, gamma[idx]
    flip = s[:, first] > 0  # [K, 3]: wind towards the positive side
    perm = jnp.where(flip[..., None], jnp.array([0, 1, 3, 2]), jnp.array([2, 3, 1, 0]))
    quad = jnp.take_along_axis(slots, perm, -1)
    qg = jnp.take_along_axis(gam, perm, -1)
    g02, g13 = qg[..., 0] * qg[..., 2], qg[..., 1] * qg[..., 3]
    vertices, colors, vertex_mask = vd.reshape(K * MAX_VD, 3), vd_color.reshape(K * MAX_VD, -1), vd_mask.reshape(-1)
    if training:
        quad = jnp.where(ok[..., None], quad, 0)  # [K, 3, 4]; unused quads point at slot 0 (masked below)
        w02, w13 = (g02 / (g02 + g13 + 1e-8))[..., None], (g13 / (g02 + g13 + 1e-8))[..., None]
        centre = lambda a: w02 * (a[..., 0, :] + a[..., 2, :]) / 2 + w13 * (a[..., 1, :] + a[..., 3, :]) / 2
        centre_slot = K * MAX_VD + jnp.arange(3 * K, dtype=jnp.int32).reshape(K, 3)
        fan = jnp.stack([quad, jnp.roll(quad, -1, -1), jnp.broadcast_to(centre_slot[..., None], quad.shape)], -1)
        faces, face_mask = fan, jnp.broadcast_to(ok[..., None], (K, 3, 4))  # [K, 3, 4, 3]: (q_i, q_i+1, c)
        vertices = jnp.concatenate([vertices, centre(vertices[quad]).reshape(3 * K, 3)])
        colors = jnp.concatenate([colors, centre(colors[quad]).reshape(3 * K, -1)])
        vertex_mask = jnp.concatenate([vertex_mask, ok.reshape(-1)])
    else:
        tri = jnp.where((g02 > g13)[..., None, None], jnp.array([[0, 1, 2], [0, 2, 3]]), jnp.array([[0, 1, 3], [3, 1, 2]]))
        faces = jnp.take_along_axis(quad[..., None, :], tri, -1)  # [K, 3, 2, 3]
        face_mask = jnp.broadcast_to(ok[..., None], (K, 3, 2))
    return DualMesh(
        vertices=vertices,
        colors=colors,
        vertex_mask=vertex_mask,
        faces=faces.reshape(-1, 3).astype(jnp.int32),
        face_mask=face_mask.reshape(-1),
        deviation=deviation.reshape(-1),
        num_edges=n_edges.reshape(-1).astype(jnp.int32),
    )
