"""Run an official-format model on the inputs of a reference fixture (`io.npz`, see FIXTURES.md).

Inputs arrive channels-first / packed as in the PyTorch reference and are converted to this
project's layouts; outputs are converted back to the fixture's keys:
  dense  `out`                    [B, C, D, H, W]        (SS encoder: posterior mean; SS decoder: logits; G_S: velocity)
  sparse `out_feats` (+`out_coords`) packed rows sorted by (b, x, y, z)  (G_L velocity; SLat encoder mean;
                                   mesh decoder 256³ features)
  mesh decoder surface `out_vertices`, `out_faces`, `out_vertex_attrs` (when the case holds them;
                   compared as matched sets, see `mesh_fixture`)
  Gaussian decoder `out_xyz` (world), `out_features_dc`, `out_scaling` (activated, 3D filter incl.),
                   `out_rotation` (unit, w first), `out_opacity` — flattened voxel-major in packed row order
  RF decoder `out_trivec` (+1 applied), `out_density`, `out_features_dc`, `out_position`
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from trellis_jax.models.slat_encoder import SLatEncoder
from trellis_jax.models.slat_flow import SLatFlowModel
from trellis_jax.models.slat_gaussian_decoder import SLatGaussianDecoder
from trellis_jax.models.slat_mesh_decoder import SLatMeshDecoder
from trellis_jax.models.slat_rf_decoder import SLatRadianceFieldDecoder
from trellis_jax.models.ss_flow import SparseStructureFlowModel
from trellis_jax.models.ss_vae import SparseStructureDecoder, SparseStructureEncoder
from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.tools.mesh_fixture import MESH_KEYS, compare_mesh, mesh_outputs


def to_channels_last(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(np.moveaxis(np.asarray(x, np.float32), 1, -1))


def to_channels_first(x) -> np.ndarray:
    return np.moveaxis(np.asarray(x, np.float32), -1, 1)


def sort_packed(coords: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(tuple(coords[:, i] for i in range(coords.shape[1] - 1, -1, -1)))
    return coords[order], feats[order]


def sparse_input(io, resolution: int) -> SparseTensor:
    coords = np.asarray(io["coords"], np.int32)
    counts = np.bincount(coords[:, 0])
    return SparseTensor.from_packed(coords, np.asarray(io["feats"], np.float32), capacity=int(counts.max()), resolution=resolution)


def _packed_rows(st: SparseTensor, per_voxel: np.ndarray) -> np.ndarray:
    """Per-voxel arrays [B, L, ...] -> packed rows in the input's order (valid rows only)."""
    mask = np.asarray(st.mask)
    return np.asarray(per_voxel)[mask]


_JITTED: dict[str, object] = {}


def _jitted_apply(module):
    """One jitted forward per module configuration (keyed by its repr, which lists every field: some
    fields are dicts, so modules are not hashable); a model re-loaded from the same json reuses it."""
    key = repr(module)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(module.apply)
    return _JITTED[key]


def run_fixture(module, params, io) -> dict[str, np.ndarray]:
    """Our outputs under the fixture's output keys (one jitted forward: compiling the whole network
    once is several times faster than running it op by op)."""
    apply = _jitted_apply(module)
    if isinstance(module, SparseStructureEncoder):
        _, mean, _ = apply(params, to_channels_last(io["x"]))
        return {"out": to_channels_first(mean)}
    if isinstance(module, SparseStructureDecoder):
        return {"out": to_channels_first(apply(params, to_channels_last(io["x"])))}
    if isinstance(module, SparseStructureFlowModel):
        out = apply(params, to_channels_last(io["x"]), jnp.asarray(io["t"], jnp.float32), jnp.asarray(io["cond"], jnp.float32))
        return {"out": to_channels_first(out)}
    if isinstance(module, (SLatFlowModel, SLatEncoder, SLatMeshDecoder)):
        x = sparse_input(io, module.resolution)
        if isinstance(module, SLatFlowModel):
            out = apply(params, x, jnp.asarray(io["t"], jnp.float32), jnp.asarray(io["cond"], jnp.float32))
        elif isinstance(module, SLatEncoder):
            out = apply(params, x)[1]
        else:
            out = apply(params, x)
        coords, feats = out.to_packed()
        result = {"out_coords": coords, "out_feats": feats}
        if isinstance(module, SLatMeshDecoder) and "out_vertices" in io:
            result.update(mesh_outputs(out))
        return result
    if isinstance(module, SLatGaussianDecoder):
        x = sparse_input(io, module.resolution)
        g = apply(params, x)
        G = g.xyz.shape[1] // x.capacity
        rows = lambda a: _packed_rows(x, np.asarray(a).reshape((a.shape[0], x.capacity, G) + a.shape[2:])).reshape((-1,) + a.shape[2:])
        return {"out_xyz": rows(g.xyz), "out_features_dc": rows(g.features_dc), "out_scaling": rows(g.scaling),
                "out_rotation": rows(g.rotation), "out_opacity": rows(g.opacity)}
    if isinstance(module, SLatRadianceFieldDecoder):
        x = sparse_input(io, module.resolution)
        s = apply(params, x)
        return {"out_trivec": _packed_rows(x, s.trivec), "out_density": _packed_rows(x, s.density),
                "out_features_dc": _packed_rows(x, s.features_dc), "out_position": _packed_rows(x, s.position)}
    raise TypeError(f"no fixture runner for {type(module).__name__}")


def compare(ours: dict, io) -> dict[str, float]:
    """max |ours − reference| per reference output key (sparse outputs compared as sorted sets)."""
    errs = {}
    keys = [k for k in io.files if k.startswith("out")]
    if "out_vertices" in keys:
        errs.update(compare_mesh(ours, io))
        keys = [k for k in keys if k not in MESH_KEYS]
    if "out_feats" in keys and "out_coords" in ours:
        ref_coords = np.asarray(io["out_coords"]) if "out_coords" in io.files else np.asarray(io["coords"])
        rc, rf = sort_packed(ref_coords, np.asarray(io["out_feats"]))
        oc, of = sort_packed(ours["out_coords"], ours["out_feats"])
        if rc.shape != oc.shape or not np.array_equal(rc, oc):
            errs["out_coords"] = float("inf")
        else:
            errs["out_feats"] = float(np.max(np.abs(of - rf))) if rf.size else 0.0
        keys = [k for k in keys if k not in ("out_feats", "out_coords")]
    for k in keys:
        if k not in ours:
            errs[k] = float("inf")
            continue
        ref = np.asarray(io[k], np.float32)
        got = np.asarray(ours[k], np.float32).reshape(ref.shape) if np.size(ours[k]) == ref.size else None
        errs[k] = float(np.max(np.abs(got - ref))) if got is not None and ref.size else (0.0 if got is not None else float("inf"))
    return errs
