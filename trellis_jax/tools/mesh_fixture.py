"""Mesh-decoder fixture outputs: the extracted surface and its comparison with the reference's.

The two sides list the same vertices in different orders, so vertices are matched as a set: each
reference vertex to its nearest vertex here (stored cases keep all vertices more than 1e-4 apart,
so the match is unambiguous), which must be one-to-one. Errors:
  out_vertices      largest matched distance
  out_faces         0 when the face lists agree through the matching (each face rotated so that its
                    smallest index comes first, orientation kept; lists sorted), inf otherwise
  out_vertex_attrs  max |difference| through the matching
A different vertex or face count, or a non-bijective match, is inf for every key.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from trellis_jax.representations.mesh import extract_mesh_arrays
from trellis_jax.sparse.tensor import SparseTensor

MESH_KEYS = ("out_vertices", "out_faces", "out_vertex_attrs")


def mesh_outputs(decoded: SparseTensor) -> dict[str, np.ndarray]:
    """The surface of sample 0 of the mesh decoder's output under the fixture keys."""
    vertices, faces, attrs = extract_mesh_arrays(decoded)[0]
    return {"out_vertices": vertices, "out_faces": faces, "out_vertex_attrs": attrs}


def canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Rotate each face [F, 3] so its smallest index is first (keeps orientation), then sort the rows."""
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    start = np.argmin(faces, 1)
    rows = np.arange(len(faces))[:, None]
    rotated = faces[rows, (start[:, None] + np.arange(3)[None]) % 3]
    return rotated[np.lexsort(rotated.T[::-1])] if len(rotated) else rotated


def compare_mesh(ours: dict, io) -> dict[str, float]:
    """Errors per mesh key that `io` holds (see the module docstring); `ours` uses the same keys."""
    ref_v = np.asarray(io["out_vertices"], np.float64).reshape(-1, 3)
    ref_f = np.asarray(io["out_faces"]).reshape(-1, 3)
    keys = [k for k in MESH_KEYS if k in io]
    inf = {k: float("inf") for k in keys}
    if any(k not in ours for k in keys):
        return inf
    v = np.asarray(ours["out_vertices"], np.float64).reshape(-1, 3)
    f = np.asarray(ours["out_faces"]).reshape(-1, 3)
    if len(v) != len(ref_v) or len(f) != len(ref_f):
        return inf
    if len(v) == 0:
        return {k: 0.0 for k in keys}
    dist, match = cKDTree(v).query(ref_v)  # reference vertex i <-> our vertex match[i]
    if len(np.unique(match)) != len(match):
        return inf
    ours_to_ref = np.empty(len(v), np.int64)
    ours_to_ref[match] = np.arange(len(match))
    errs = {"out_vertices": float(dist.max())}
    same = np.array_equal(canonical_faces(ours_to_ref[f]), canonical_faces(ref_f))
    errs["out_faces"] = 0.0 if same else float("inf")
    if "out_vertex_attrs" in keys:
        ref_a = np.asarray(io["out_vertex_attrs"], np.float64)
        a = np.asarray(ours["out_vertex_attrs"], np.float64)
        errs["out_vertex_attrs"] = float(np.abs(a[match] - ref_a).max()) if a.shape == ref_a.shape else float("inf")
    return errs
