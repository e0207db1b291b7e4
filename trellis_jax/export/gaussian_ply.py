"""Standard 3DGS binary PLY, exactly as the reference's `Gaussian.save_ply` writes it.

Per Gaussian (float32): x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3 with positions rotated
z-up → y-up by T = [[1,0,0],[0,0,-1],[0,1,0]] ((x, y, z) → (x, −z, y)), zero normals, raw SH DC,
opacity as a logit, log scales, and the rotation T·R(q) as a unit (w, x, y, z) quaternion.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trellis_jax.atomic import atomic_write

PLY_TRANSFORM = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64)
FIELDS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
          "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _quat_to_mat(q):
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _mat_to_quat(m):
    """Rotation matrices [N,3,3] -> unit quaternions (w, x, y, z), w ≥ 0, robust branch choice."""
    t = np.trace(m, axis1=1, axis2=2)
    cands = np.stack([
        np.stack([1 + t, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # [N, 4 candidates, 4]
    best = np.argmax(np.stack([1 + t, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                               1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1), -1)
    q = cands[np.arange(len(m)), best]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def gaussian_ply_arrays(xyz, features_dc, opacity, scaling, rotation) -> np.ndarray:
    """Activated attributes (world xyz [N,3], SH DC [N,3], opacity (0,1) [N], scale [N,3] > 0,
    unit quaternion [N,4]) -> structured array with the PLY fields."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    n = len(xyz)
    rot = np.einsum("ij,njk->nik", PLY_TRANSFORM, _quat_to_mat(np.asarray(rotation, np.float64).reshape(n, 4)))
    op = np.clip(np.asarray(opacity, np.float64).reshape(n), 1e-7, 1 - 1e-7)
    cols = [xyz @ PLY_TRANSFORM.T, np.zeros((n, 3)), np.asarray(features_dc, np.float64).reshape(n, 3),
            np.log(op / (1 - op))[:, None], np.log(np.asarray(scaling, np.float64).reshape(n, 3)), _mat_to_quat(rot)]
    flat = np.concatenate(cols, axis=1).astype(np.float32)
    out = np.empty(n, dtype=[(f, "<f4") for f in FIELDS])
    for i, f in enumerate(FIELDS):
        out[f] = flat[:, i]
    return out


def write_structured_ply(path: str | Path, vertices: np.ndarray) -> Path:
    """Binary little-endian PLY with one `vertex` element, written atomically."""
    types = {"<f4": "float", "<i4": "int", "|u1": "uchar", "<u4": "uint"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}"]
    header += [f"property {types[vertices.dtype[name].str]} {name}" for name in vertices.dtype.names]
    header.append("end_header")
    return atomic_write(path, lambda tmp: tmp.write_bytes(("\n".join(header) + "\n").encode("ascii") + vertices.tobytes()))


def save_gaussian_ply(path, xyz, features_dc, opacity, scaling, rotation) -> Path:
    return write_structured_ply(path, gaussian_ply_arrays(xyz, features_dc, opacity, scaling, rotation))


def read_gaussian_ply(path) -> dict[str, np.ndarray]:
    """Inverse of `save_gaussian_ply` back to activated attributes in the z-up frame."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    names = [l.split()[-1] for l in header if l.startswith("property")]
    if names != FIELDS:
        raise ValueError(f"{path}: not a 3DGS PLY (properties {names})")
    arr = np.frombuffer(data[end:], dtype=[(f, "<f4") for f in FIELDS], count=n)
    get = lambda *fs: np.stack([arr[f] for f in fs], -1).astype(np.float64)
    rot = np.einsum("ji,njk->nik", PLY_TRANSFORM, _quat_to_mat(get("rot_0", "rot_1", "rot_2", "rot_3")))
    return {
        "xyz": get("x", "y", "z") @ PLY_TRANSFORM,
        "features_dc": get("f_dc_0", "f_dc_1", "f_dc_2"),
        "opacity": 1 / (1 + np.exp(-arr["opacity"].astype(np.float64))),
        "scaling": np.exp(get("scale_0", "scale_1", "scale_2")),
        "rotation": _mat_to_quat(rot),
    }
