"""Random weights and reference-layout inputs for small networks (fixtures, precision checks).

`random_params` draws every leaf of the parameter template (no zero-initialised outputs, so every
layer influences the result); `reference_inputs` builds `io.npz`-style inputs (docs/reference_fixtures.md):
channels-first dense arrays, packed sparse `coords (b,x,y,z)` + `feats`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from trellis_jax.checkpoints.official import param_template


def random_params(module, seed: int = 0, std: float = 0.2) -> dict:
    """{'params': ...} with N(0, std) kernels/biases, 1 + N(0, std) norm scales and QK gammas.

    Buffers (`pos_emb`, `offset_perturbation`) are random too: they are ordinary leaves in the
    checkpoint, and the loaders must carry them like any other tensor.
    """
    rng = np.random.default_rng(seed)  # host RNG: one eager device op per shape would compile each
    flat = {}
    for path, s in param_template(module).items():
        noise = (std * rng.standard_normal(s.shape)).astype(np.float32)
        flat[path] = jnp.asarray(noise + 1.0 if path[-1] in ("scale", "gamma") else noise)
    return {"params": traverse_util.unflatten_dict(flat)}


def _sparse_coords(rng, counts, resolution):
    """Distinct voxels per sample inside the central half of the grid, rows grouped by batch."""
    half = resolution // 2
    rows = []
    for b, n in enumerate(counts):
        flat = rng.choice(half**3, n, replace=False)
        xyz = np.stack(np.unravel_index(flat, (half,) * 3), 1) + resolution // 4
        rows.append(np.concatenate([np.full((n, 1), b), xyz], 1))
    return np.concatenate(rows).astype(np.int32)


def reference_inputs(module, rng: np.random.Generator, counts=(40, 25)) -> dict[str, np.ndarray]:
    """Inputs for `module` in the fixture layout (batch 2)."""
    name = type(module).__name__
    if name == "SparseStructureEncoder":
        r = 2 ** len(module.channels) * 2
        return {"x": (rng.uniform(size=(2, module.in_channels, r, r, r)) > 0.7).astype(np.float32)}
    if name == "SparseStructureDecoder":
        return {"x": rng.normal(size=(2, module.latent_channels, 4, 4, 4)).astype(np.float32)}
    if name == "SparseStructureFlowModel":
        r = module.resolution
        return {"x": rng.normal(size=(2, module.in_channels, r, r, r)).astype(np.float32),
                "t": np.array([0.3, 0.9], np.float32),
                "cond": rng.normal(size=(2, 5, module.cond_channels)).astype(np.float32)}
    coords = _sparse_coords(rng, counts, module.resolution)
    channels = module.in_channels if name in ("SLatFlowModel", "SLatEncoder") else module.latent_channels
    io = {"coords": coords, "feats": rng.normal(size=(len(coords), channels)).astype(np.float32)}
    if name == "SLatFlowModel":
        io.update(t=np.array([0.2, 0.7], np.float32), cond=rng.normal(size=(2, 5, module.cond_channels)).astype(np.float32))
    return io
