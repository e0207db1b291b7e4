"""Lookup tables of Dual Marching Cubes / FlexiCubes, generated from the cube's geometry.

Conventions (those of the reference, on which its tables and face winding depend):
  corner j = (j & 1, (j >> 1) & 1, (j >> 2) & 1)           x fastest; case bit j = corner j has sdf < 0
  edges 0-3   the ring y=0 through corners 0, 1, 5, 4, each written (lower corner, higher corner)
  edges 4-7   the same ring shifted to y=1 (corner + 2)
  edges 8-11  the y-edges (top corner, bottom corner) above corners 0, 1, 5, 4
Every edge along an axis is written with its endpoints in the same order in every cube, so a grid
edge's "first endpoint" is well defined (it orients the quad around it).

Generated tables (for the 256 sign cases):
  DMC_GROUPS  int32 [256, 4, 7]  per dual vertex, the cube edges whose zero crossings it averages (-1 pad)
  NUM_VD      int32 [256]        dual vertices per case
  CHECK       int32 [256, 5]     (is_ambiguous, dx, dy, dz, inverted case) for the cases whose one
                                 ambiguous face must be resolved jointly with the neighbour across it
A group is one closed curve of the surface on the cube's boundary: on each face the sign-change
edges are paired as marching squares pairs them, and a face with alternating corner signs (ambiguous)
keeps its negative corners apart. A case is ambiguous-checked when it has one dual vertex, exactly one
ambiguous face, and its complement has two: if the cube across that face is such a case too, both use
their complement's grouping (the inverted case), which joins the negative corners across the face in
both cubes consistently.
"""
from __future__ import annotations

import numpy as np

CORNERS = np.array([(j & 1, (j >> 1) & 1, (j >> 2) & 1) for j in range(8)], np.int32)  # [8, 3]


def _edges() -> np.ndarray:
    ring = [0, 1, 5, 4]
    bottom = [tuple(sorted((ring[i], ring[(i + 1) % 4]))) for i in range(4)]
    top = [(a + 2, b + 2) for a, b in bottom]
    vertical = [(r + 2, r) for r in ring]
    return np.array(bottom + top + vertical, np.int32)


EDGES = _edges()  # [12, 2] corner indices
EDGE_AXIS = np.argmax(np.abs(CORNERS[EDGES[:, 1]] - CORNERS[EDGES[:, 0]]), axis=1).astype(np.int32)  # [12]
# The corner an edge starts from in the grid sense (its lower endpoint along its axis).
EDGE_LOW_CORNER = np.where(CORNERS[EDGES[:, 0], EDGE_AXIS] == 0, EDGES[:, 0], EDGES[:, 1]).astype(np.int32)


def _edge_id(a: int, b: int) -> int:
    for i, (p, q) in enumerate(EDGES):
        if {int(p), int(q)} == {a, b}:
            return i
    raise KeyError((a, b))


def _faces() -> list[tuple[list[int], tuple[int, int, int]]]:
    """The 6 faces: corners in cyclic order and the outward normal."""
    out = []
    for axis in range(3):
        u, v = [d for d in range(3) if d != axis]
        for side in (0, 1):
            cs = [j for j in range(8) if CORNERS[j, axis] == side]
            cs.sort(key=lambda j: np.arctan2(CORNERS[j, v] - 0.5, CORNERS[j, u] - 0.5))
            normal = [0, 0, 0]
            normal[axis] = 1 if side else -1
            out.append((cs, tuple(normal)))
    return out


FACES = _faces()


def surface_groups(case: int) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
    """(edge groups of the dual vertices, outward normals of the ambiguous faces) of one sign case."""
    neg = [(case >> j) & 1 for j in range(8)]
    crossing = [e for e, (a, b) in enumerate(EDGES) if neg[a] != neg[b]]
    parent = {e: e for e in crossing}

    def root(e):
        while parent[e] != e:
            e = parent[e]
        return e

    def join(a, b):
        parent[root(a)] = root(b)

    ambiguous = []
    for cyc, normal in FACES:
        ring = [_edge_id(cyc[i], cyc[(i + 1) % 4]) for i in range(4)]
        cut = [e for e in ring if e in parent]
        if len(cut) == 2:
            join(*cut)
        elif len(cut) == 4:  # alternating signs: pair the two edges at each negative corner
            ambiguous.append(normal)
            for i in range(4):
                if neg[cyc[i]]:
                    join(ring[i], ring[i - 1])
    groups: dict[int, list[int]] = {}
    for e in crossing:
        groups.setdefault(root(e), []).append(e)
    return sorted(sorted(g) for g in groups.values()), ambiguous


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dmc = np.full((256, 4, 7), -1, np.int32)
    num_vd = np.zeros(256, np.int32)
    check = np.zeros((256, 5), np.int32)
    info = [surface_groups(c) for c in range(256)]
    for c, (groups, ambiguous) in enumerate(info):
        num_vd[c] = len(groups)
        for g, edges in enumerate(groups):
            dmc[c, g, : len(edges)] = edges
        if len(groups) == 1 and len(ambiguous) == 1 and len(info[255 - c][0]) == 2:
            check[c] = (1, *ambiguous[0], 255 - c)
    return dmc, num_vd, check


DMC_GROUPS, NUM_VD, CHECK = _tables()
GROUP_MEMBERS = np.any(DMC_GROUPS[..., None] == np.arange(12), 2)  # [256, 4, 12]: edge e in group g of a case

# For a grid edge along `axis` and the 4 cubes around it at offsets (du, dv) ∈ {-1, 0}² in the two
# other axes (u < v), listed in increasing cube order: the local edge index in each of those cubes.
# QUAD_OFFSETS [4, 2] = (-1,-1), (-1,0), (0,-1), (0,0); EDGE_IN_NEIGHBOUR [3, 4].
QUAD_OFFSETS = np.array([(-1, -1), (-1, 0), (0, -1), (0, 0)], np.int32)


def _edge_in_neighbour() -> np.ndarray:
    out = np.zeros((3, 4), np.int32)
    for axis in range(3):
        u, v = [d for d in range(3) if d != axis]
        for q, (du, dv) in enumerate(QUAD_OFFSETS):
            low = np.zeros(3, np.int32)
            low[u], low[v] = -du, -dv  # the edge's low end seen from the neighbour cube
            cand = [e for e in range(12) if EDGE_AXIS[e] == axis and np.array_equal(CORNERS[EDGE_LOW_CORNER[e]], low)]
            (out[axis, q],) = cand
    return out


EDGE_IN_NEIGHBOUR = _edge_in_neighbour()
PERPENDICULAR = np.array([[d for d in range(3) if d != a] for a in range(3)], np.int32)  # [3, 2] (u, v) per axis


def _quad_cube_offsets() -> np.ndarray:
    out = np.zeros((3, 4, 3), np.int32)
    for axis, (u, v) in enumerate(PERPENDICULAR):
        out[axis, :, u], out[axis, :, v] = QUAD_OFFSETS[:, 0], QUAD_OFFSETS[:, 1]
    return out


# [3, 4, 3]: the offsets of the 4 cubes around a grid edge along each axis from the cube at its low end.
QUAD_CUBE_OFFSETS = _quad_cube_offsets()
# The three edges leaving corner 0 (one per axis): a cube owns the grid edges starting at its origin.
ORIGIN_EDGES = np.array([next(e for e in range(12) if EDGE_AXIS[e] == a and EDGE_LOW_CORNER[e] == 0) for a in range(3)], np.int32)

# Corner j of a cube c is also a corner of the cube c + o (o ∈ {-1, 0, 1}³) iff CORNERS[j] − o ∈ {0, 1}³.
NEIGHBOUR_OFFSETS = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)], np.int32)  # [27, 3]
SHARED_CORNERS = np.all((CORNERS[None] - NEIGHBOUR_OFFSETS[:, None] >= 0) & (CORNERS[None] - NEIGHBOUR_OFFSETS[:, None] <= 1), -1)  # [27, 8]
