"""FlexiCubes (Shen et al. 2023) at inference, on a sparse cube table (see `sparse_grid.CubeGrid`).

Per surface cube (corner signs differ): the sign case picks the cube's dual vertices and the edges each
one averages (`cube_tables`), ambiguous faces shared by two checked cases are resolved jointly, and
every dual vertex is the β-weighted mean of its edges' α-weighted zero crossings (colours alike). Each
grid edge with a sign change and four cubes around it gives a quad of their dual vertices, wound so
that it faces the positive side and split into two triangles along the diagonal of larger γ product.

Results stay in static slots: dual vertex (k, g) is slot 4k + g, and cube k owns the quads of the
three grid edges leaving its origin corner (faces [K, 3, 2, 3], two triangles per quad).
Differentiable in the positions, sdf, weights and colours; the topology (signs) is not.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from trellis_jax.representations.mesh.cube_tables import (
    CHECK, DMC_GROUPS, EDGE_IN_NEIGHBOUR, EDGES, NUM_VD, ORIGIN_EDGES, QUAD_OFFSETS)
from trellis_jax.representations.mesh.sparse_grid import SENTINEL, CubeGrid, grid_key, lookup

MAX_VD = 4  # dual vertices per cube, at most


@struct.dataclass
class DualMesh:
    """Slots of one sample: vertices [4K, 3], colours [4K, C], vertex_mask [4K], faces [3K·2, 3]
    (indices of vertex slots), face_mask [3K·2]."""

    vertices: jax.Array
    colors: jax.Array
    vertex_mask: jax.Array
    faces: jax.Array
    face_mask: jax.Array


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


def dual_mesh(grid: CubeGrid, weight_scale: float = 0.99) -> DualMesh:
    K = grid.keys.shape[0]
    x = grid.vertex_positions()  # [K, 8, 3]
    s = grid.sdf
    color = jax.nn.sigmoid(grid.color)  # [K, 8, C]
    negative = s < 0
    n_neg = jnp.sum(negative, -1)
    surface = grid.valid & (n_neg > 0) & (n_neg < 8)
    beta, alpha, gamma = normalized_weights(grid.weights, weight_scale)
    case = case_ids(grid, negative, surface)

    # Dual vertices: groups of edges [K, 4, 7] -> β-weighted mean of α-weighted zero crossings.
    groups = jnp.asarray(DMC_GROUPS)[case]
    in_group = (groups >= 0) & surface[:, None, None]
    e = jnp.maximum(groups, 0)
    a, b = jnp.asarray(EDGES[:, 0])[e], jnp.asarray(EDGES[:, 1])[e]  # corner ids [K, 4, 7]
    take = lambda arr, c: jnp.take_along_axis(arr, c.reshape(K, -1), 1).reshape(c.shape)
    take_v = lambda arr, c: jnp.take_along_axis(arr, c.reshape(K, -1, 1), 1).reshape(c.shape + arr.shape[-1:])
    wa, wb = take(s, a) * take(alpha, a), take(s, b) * take(alpha, b)
    denom = jnp.where(in_group, wb - wa, 1.0)[..., None]
    crossing = (take_v(x, a) * wb[..., None] - take_v(x, b) * wa[..., None]) / denom
    col = (take_v(color, a) * wb[..., None] - take_v(color, b) * wa[..., None]) / denom
    be = jnp.where(in_group, take(beta, e), 0.0)[..., None]  # [K, 4, 7, 1]
    bsum = jnp.sum(be, 2)
    vd_mask = (bsum[..., 0] > 0) & (jnp.arange(MAX_VD)[None] < jnp.asarray(NUM_VD)[case][:, None]) & surface[:, None]
    bsafe = jnp.where(vd_mask[..., None], bsum, 1.0)
    vd = jnp.sum(crossing * be, 2) / bsafe
    vd_color = jnp.sum(col * be, 2) / bsafe
    # The dual vertex slot each cube edge belongs to [K, 12] (-1 if none).
    member = jnp.any((groups[..., None] == jnp.arange(12)) & in_group[..., None], 2)  # [K, 4, 12]
    edge_vd = jnp.where(jnp.any(member, 1), jnp.argmax(member, 1), -1)

    # Quads: cube k owns the 3 grid edges at its origin corner; the other cubes are found by key.
    faces, face_mask = [], []
    for axis in range(3):
        u, v = [d for d in range(3) if d != axis]
        e0 = int(ORIGIN_EDGES[axis])
        first, second = int(EDGES[e0, 0]), int(EDGES[e0, 1])
        cut = negative[:, first] != negative[:, second]
        ok = surface & cut & (grid.coords[:, u] >= 1) & (grid.coords[:, v] >= 1)
        slots, gam = [], []
        for q in range(4):
            off = np.zeros(3, np.int32)
            off[u], off[v] = QUAD_OFFSETS[q]
            keys = jnp.where(ok, grid_key(grid.coords + off, grid.resolution), SENTINEL)
            idx, found = lookup(grid.keys, keys)
            g = edge_vd[idx, int(EDGE_IN_NEIGHBOUR[axis, q])]
            ok = ok & found & (g >= 0)
            slots.append(idx * MAX_VD + g)
            gam.append(gamma[idx])
        slots, gam = jnp.stack(slots, -1), jnp.stack(gam, -1)  # [K, 4]
        flip = s[:, first] > 0  # wind towards the positive side
        perm = jnp.where(flip[:, None], jnp.array([0, 1, 3, 2]), jnp.array([2, 3, 1, 0]))
        quad = jnp.take_along_axis(slots, perm, 1)
        qg = jnp.take_along_axis(gam, perm, 1)
        split_02 = (qg[:, 0] * qg[:, 2]) > (qg[:, 1] * qg[:, 3])
        tri = jnp.where(split_02[:, None, None], jnp.array([[0, 1, 2], [0, 2, 3]]), jnp.array([[0, 1, 3], [3, 1, 2]]))
        faces.append(jnp.take_along_axis(quad[:, None, :], tri, 2))  # [K, 2, 3]
        face_mask.append(jnp.broadcast_to(ok[:, None], (K, 2)))
    return DualMesh(
        vertices=vd.reshape(K * MAX_VD, 3),
        colors=vd_color.reshape(K * MAX_VD, -1),
        vertex_mask=vd_mask.reshape(-1),
        faces=jnp.stack(faces, 1).reshape(-1, 3).astype(jnp.int32),
        face_mask=jnp.stack(face_mask, 1).reshape(-1),
    )
