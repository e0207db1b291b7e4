"""Brute-force numpy FlexiCubes on the dense grid, organised as the reference's `SparseFeatures2Mesh`
(dense (res+1)³ vertex grid with defaults, every one of the res³ cubes, global edge dictionary), with
plain loops: it shares only the lookup tables with `trellis_jax.representations.mesh`, so it checks
the sparse candidate set, the lookups and the slot bookkeeping."""
from __future__ import annotations

import numpy as np

from trellis_jax.representations.mesh.cube_tables import CHECK, CORNERS, DMC_GROUPS, EDGES, NUM_VD


def dense_flexicubes(coords: np.ndarray, feats: np.ndarray, res: int, weight_scale: float = 0.99, stats=None):
    """coords int [L, 3], feats [L, 101] (decoder layout) -> (vertices [V, 3], faces [F, 3], attrs [V, 6]).
    `stats` (a dict), when given, receives the number of surface cubes, of inactive ones among them and
    of cubes whose ambiguous face was resolved jointly with a neighbour."""
    coords = np.asarray(coords, np.int64)
    feats = np.asarray(feats, np.float64)
    L = len(coords)
    sdf = feats[:, 0:8] - 1.0 / res
    deform = feats[:, 8:32].reshape(L, 8, 3)
    weights = feats[:, 32:53]
    color = feats[:, 53:101].reshape(L, 8, 6)
    R = res + 1
    total = np.zeros((R, R, R, 10))
    count = np.zeros((R, R, R))
    for i in range(L):
        for j in range(8):
            p = tuple(coords[i] + CORNERS[j])
            total[p] += np.concatenate([[sdf[i, j]], deform[i, j], color[i, j]])
            count[p] += 1
    vattr = np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], 0.0)
    vattr[..., 0] = np.where(count > 0, vattr[..., 0], 1.0)
    grid = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1)
    pos = grid / res - 0.5 + (1 - 1e-8) / (2 * res) * np.tanh(vattr[..., 1:4])
    s, col = vattr[..., 0], 1 / (1 + np.exp(-vattr[..., 4:]))
    w = np.zeros((res, res, res, 21))
    for i in range(L):
        w[tuple(coords[i])] = weights[i]
    beta = np.tanh(w[..., :12]) * weight_scale + 1
    alpha = np.tanh(w[..., 12:20]) * weight_scale + 1
    gamma = 1 / (1 + np.exp(-w[..., 20])) * weight_scale + (1 - weight_scale) / 2

    cubes = [tuple(c) for c in grid[:res, :res, :res].reshape(-1, 3)]  # x-major, as the reference
    corner = lambda c, j: tuple(np.asarray(c) + CORNERS[j])
    case = {}
    for c in cubes:
        neg = [s[corner(c, j)] < 0 for j in range(8)]
        if 0 < sum(neg) < 8:
            case[c] = sum(1 << j for j in range(8) if neg[j])
    original = dict(case)
    for c, k in original.items():
        if CHECK[k, 0]:
            adj = tuple(np.asarray(c) + CHECK[k, 1:4])
            if adj in original and CHECK[original[adj], 0]:
                case[c] = int(CHECK[k, 4])
    if stats is not None:
        active = {tuple(c) for c in coords}
        stats.update(surface=len(case), inactive_surface=sum(c not in active for c in case),
                     inverted=sum(case[c] != original[c] for c in case))

    vertices, attrs, gam, vd_of = [], [], [], {}  # vd_of[(cube, local edge)] = vertex index
    for c in cubes:
        if c not in case:
            continue
        k = case[c]
        for g in range(NUM_VD[k]):
            acc, acc_c, bsum = np.zeros(3), np.zeros(6), 0.0
            for e in DMC_GROUPS[k, g]:
                if e < 0:
                    continue
                a, b = EDGES[e]
                wa, wb = s[corner(c, a)] * alpha[c][a], s[corner(c, b)] * alpha[c][b]
                ue = (pos[corner(c, a)] * wb - pos[corner(c, b)] * wa) / (wb - wa)
                uc = (col[corner(c, a)] * wb - col[corner(c, b)] * wa) / (wb - wa)
                acc, acc_c, bsum = acc + beta[c][e] * ue, acc_c + beta[c][e] * uc, bsum + beta[c][e]
                vd_of[(c, e)] = len(vertices)
            vertices.append(acc / bsum)
            attrs.append(acc_c / bsum)
            gam.append(gamma[c])

    # Global edges (ordered vertex pairs) -> the (cube, local edge) entries of surface cubes, in cube order.
    around = {}
    for c in cubes:
        if c in case:
            for e, (a, b) in enumerate(EDGES):
                around.setdefault((corner(c, a), corner(c, b)), []).append((c, e))
    faces = []
    for (p, q), entries in around.items():
        if len(entries) != 4 or (s[p] < 0) == (s[q] < 0):
            continue
        quad = [vd_of[ce] for ce in entries]
        quad = [quad[i] for i in ((0, 1, 3, 2) if s[p] > 0 else (2, 3, 1, 0))]
        g = [gam[v] for v in quad]
        split = ((0, 1, 2), (0, 2, 3)) if g[0] * g[2] > g[1] * g[3] else ((0, 1, 3), (3, 1, 2))
        faces += [[quad[i] for i in t] for t in split]
    return (np.array(vertices, np.float64).reshape(-1, 3), np.array(faces, np.int64).reshape(-1, 3),
            np.array(attrs, np.float64).reshape(-1, 6))
