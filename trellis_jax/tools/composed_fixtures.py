"""Run the composed reference cases: a flow sampler on given noise, and a whole pipeline directory.

Sampler case (`sampler.json` beside `model.json`): one flow model integrated by the Euler sampler
with the case's params from `noise` under `cond` / `neg_cond` (multi-image: `cond` [K, T, Cc] for one
sample); the final sample is `out` (dense, channels first) or `out_feats` (sparse, rows of `coords`).

Pipeline case (`pipeline.json` + `ckpts/`): the official directory is loaded by `load_pipeline`, and
`TrellisPipeline.sample` runs on the given `noise_ss` / `noise_slat`; outputs are the voxels
(`out_coords`, exact), the de-normalised latents (`out_slat`) and every decoder's outputs under its
network keys prefixed by the format (`gaussian_out_xyz`, `radiance_field_out_density`, ...).
Both run the same code a user runs (`sample_euler`, `TrellisPipeline`), not a fixture-only copy.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.checkpoints.official import load_model, load_pipeline
from trellis_jax.models.slat_flow import SLatFlowModel
from trellis_jax.models.ss_flow import SparseStructureFlowModel
from trellis_jax.sampling.euler import SIGMA_MIN, SamplerConfig, sample_euler
from trellis_jax.sampling.pipeline import DECODER_ROLES, TrellisPipeline, dense_velocity, sparse_velocity
from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.tools.fixture_runner import compare, network_outputs, to_channels_first, to_channels_last

# Reference sampler classes this sampler reproduces, and how each maps onto SamplerConfig.
SAMPLERS = ("FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler")
MULTI_IMAGE_MODES = (None, "stochastic", "multidiffusion")


class FixtureFormatError(ValueError):
    """A composed case names a sampler, mode or layout this runner does not know."""


def case_kind(case_dir: Path) -> str:
    """'pipeline', 'sampler' or 'network' (by the extra file a case holds)."""
    case_dir = Path(case_dir)
    if (case_dir / "pipeline.json").exists():
        return "pipeline"
    if (case_dir / "sampler.json").exists():
        return "sampler"
    return "network"


def sampler_config(spec: dict, where: Path) -> tuple[SamplerConfig, str | None]:
    """A reference sampler description {'name', 'args', 'params'[, 'multi_image']} -> (config, mode)."""
    name = spec.get("name")
    if name not in SAMPLERS:
        raise FixtureFormatError(f"{where}: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    sigma_min = (spec.get("args") or {}).get("sigma_min", SIGMA_MIN)
    if not np.isclose(sigma_min, SIGMA_MIN, rtol=0, atol=1e-12):
        raise FixtureFormatError(f"{where}: sigma_min {sigma_min} differs from this sampler's {SIGMA_MIN}")
    params = dict(spec.get("params") or {})
    if name == "FlowEulerSampler":  # unguided
        params.update(cfg_strength=0.0)
    elif name == "FlowEulerCfgSampler":  # guidance at every step
        params.update(cfg_interval=(0.0, 1.0))
    mode = spec.get("multi_image")
    if mode not in MULTI_IMAGE_MODES:
        raise FixtureFormatError(f"{where}: unknown multi_image mode {mode!r}")
    return SamplerConfig.from_params(params, multi_image_mode=mode or "stochastic"), mode


_SAMPLERS: dict[tuple, object] = {}


def _jitted_sampler(module, cfg: SamplerConfig, multi_image: bool):
    """One jitted sampler per (model configuration, settings); keyed by the module's repr like the
    network runner (modules with dict fields are not hashable)."""
    key = (repr(module), cfg, multi_image)
    if key not in _SAMPLERS:
        def run(params, noise, cond, neg_cond, coords=None, mask=None):
            if coords is None:
                vel = dense_velocity(module, params)
            else:
                vel = sparse_velocity(module, params, coords, mask, module.resolution)
            return sample_euler(vel, noise, cond, neg_cond, cfg, multi_image)

        _SAMPLERS[key] = jax.jit(run)
    return _SAMPLERS[key]


def run_sampler_case(case_dir: Path) -> tuple[dict, dict]:
    """-> (our outputs, reference arrays) for a sampler case."""
    case_dir = Path(case_dir)
    module, params = load_model(case_dir / "model")
    cfg, mode = sampler_config(json.loads((case_dir / "sampler.json").read_text()), case_dir / "sampler.json")
    io = dict(np.load(case_dir / "io.npz"))
    cond = jnp.asarray(io["cond"], jnp.float32)
    if mode is not None:
        cond = cond[None]  # [1, K, T, Cc]: the K images condition one sample
    neg = jnp.asarray(io["neg_cond"], jnp.float32) if "neg_cond" in io else None
    B = cond.shape[0]
    if neg is not None:
        neg = jnp.broadcast_to(neg, (B,) + neg.shape[1:])
    if isinstance(module, SparseStructureFlowModel):
        noise = to_channels_last(io["noise"])
        out = _jitted_sampler(module, cfg, mode is not None)(params, noise, cond, neg)
        return {"out": to_channels_first(out)}, io
    if isinstance(module, SLatFlowModel):
        x = SparseTensor.from_packed(np.asarray(io["coords"], np.int32), np.asarray(io["noise"], np.float32),
                                     capacity=int(np.bincount(io["coords"][:, 0]).max()), resolution=module.resolution)
        out = _jitted_sampler(module, cfg, mode is not None)(params, x.feats, cond, neg, x.coords, x.mask)
        coords, feats = x.replace_feats(out).to_packed()
        return {"out_coords": coords, "out_feats": feats}, io
    raise FixtureFormatError(f"{case_dir / 'model.json'}: a sampler case needs a flow model, not {type(module).__name__}")


def _packed(per_sample: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, capacity, ...] -> packed rows [sum(counts), ...] (each sample's first counts[b] rows)."""
    return np.concatenate([np.asarray(per_sample[b, :n]) for b, n in enumerate(counts)])


def run_pipeline_case(case_dir: Path) -> tuple[dict, dict]:
    """-> (our outputs, reference arrays with the slat under 'out_feats') for a pipeline case."""
    case_dir = Path(case_dir)
    loaded = load_pipeline(case_dir)
    formats = tuple(f for f, role in DECODER_ROLES.items() if role in loaded["models"])
    io = dict(np.load(case_dir / "io.npz"))
    ref_counts = np.bincount(io["out_coords"][:, 0], minlength=io["noise_ss"].shape[0])
    # capacity only sizes the static buffers: a structure larger than the reference's overflows and fails
    capacity = int(-(-max(int(ref_counts.max()), 1) // 256) * 256)
    pipe = TrellisPipeline.from_checkpoint(loaded, capacity=capacity, formats=formats).with_samplers(num_stage2_sizes=1)
    out = pipe.sample(io["cond"], io.get("neg_cond"), noise_ss=np.moveaxis(io["noise_ss"], 1, -1),
                      noise_slat=io["noise_slat"])
    counts = np.asarray(out["num_voxels"])
    coords = _packed(np.asarray(out["coords"]), counts)
    ours = {"out_coords": np.concatenate([np.repeat(np.arange(len(counts)), counts)[:, None], coords], 1).astype(np.int32),
            "out_feats": _packed(np.asarray(out["latents"]), counts)}
    z = SparseTensor(out["coords"], out["latents"], out["mask"], 64)
    for fmt in formats:
        module = loaded["models"][DECODER_ROLES[fmt]][0]
        surface = f"{fmt}_out_vertices" in io  # a batch-one mesh case may hold the extracted surface
        ours.update({f"{fmt}_{k}": v for k, v in network_outputs(module, out[fmt], z, with_surface=surface).items()})
    ref = {("out_feats" if k == "out_slat" else k): v for k, v in io.items()}
    return ours, ref


def compare_pipeline(ours: dict, ref: dict) -> dict[str, float]:
    """Errors per reference key: voxels exact (as sets), latents as sorted sets, decoder outputs per format."""
    errs = compare({k: ours[k] for k in ("out_coords", "out_feats")},
                   {k: ref[k] for k in ("out_coords", "out_feats")})
    if "out_feats" in errs:
        errs["out_slat"] = errs.pop("out_feats")
    if not np.array_equal(ours["out_coords"], ref["out_coords"]):
        errs["out_coords"] = float("inf")
        return errs
    errs["out_coords"] = 0.0
    for fmt in DECODER_ROLES:
        prefix = f"{fmt}_"
        sub_ref = {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
        if not sub_ref:
            continue
        sub_ours = {k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix)}
        sub_ref.setdefault("coords", ref["out_coords"])
        errs.update({prefix + k: v for k, v in compare(sub_ours, sub_ref).items()})
    return errs


def check_composed(case_dir: Path) -> dict[str, float]:
    """Errors per output key for a sampler or pipeline case."""
    kind = case_kind(case_dir)
    if kind == "pipeline":
        return compare_pipeline(*run_pipeline_case(case_dir))
    ours, ref = run_sampler_case(case_dir)
    return compare(ours, ref)
