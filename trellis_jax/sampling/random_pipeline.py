"""Random-weight pipelines, for tests, the notebook smoke run, benchmarks and ahead-of-time compiles:
nothing to download. NOT trained models.

    write_random_pipeline(dir)                     # a tiny pipeline directory (official layout)
    pipe = pipeline_from_config(cfg, params_for)   # a TrellisPipeline from experiments/sample/*.py
"""
from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.checkpoints import save_pipeline
from trellis_jax.models.registry import build_model, dummy_inputs

TINY = {
    "sparse_structure_flow_model": ("ss_flow", "SparseStructureFlowModel", dict(
        resolution=8, in_channels=8, out_channels=8, model_channels=64, cond_channels=64, num_blocks=2, num_heads=4,
        patch_size=1, qk_rms_norm=True)),
    "sparse_structure_decoder": ("ss_dec", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8])),
    "slat_flow_model": ("slat_flow", "SLatFlowModel", dict(
        resolution=32, in_channels=8, out_channels=8, model_channels=64, cond_channels=64, num_blocks=2, num_heads=4,
        patch_size=2, io_block_channels=[16], num_io_res_blocks=2, qk_rms_norm=True)),
    "slat_decoder_gs": ("slat_dec_gs", "SLatGaussianDecoder", dict(
        resolution=32, model_channels=64, latent_channels=8, num_blocks=2, num_heads=2, window_size=8,
        representation_config=dict(num_gaussians=4))),
}
# optional extra decoder (`write_random_pipeline(..., mesh=True)`); GroupNorm32 in its subdivision blocks
# needs model_channels/8 divisible by 32.
TINY_MESH = ("slat_dec_mesh", "SLatMeshDecoder", dict(
    resolution=32, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4, window_size=8,
    representation_config={"use_color": True}))


def _key(seed: int) -> jax.Array:
    """A typed 'rbg' key: XLA CPU compiles a model's initialisers ~8x faster than with threefry (0.8 against
    6.5 s for the tiny SS decoder). Its streams are not promised stable across backends or versions,
    which does not matter here: the weights are drawn once and saved."""
    return jax.random.key(seed, impl="rbg")


def _perturbed_init(model, key, noise_key):
    """`model.init` plus N(0, 0.02) on every leaf (so zero-initialised outputs still respond), unboxed.
    Jitted by the caller: eagerly, each initialiser op would compile on its own (~1,100 compiles)."""
    params = nn.meta.unbox(model.init(key, *dummy_inputs(model)))
    return jax.tree.map(lambda a: a + 0.02 * jax.random.normal(noise_key, a.shape), params)


def calibrate_occupancy(decoder, params, occupancy: float, seed: int = 0, resolution: int = 8):
    """Shift a random SS decoder's output bias so that about `occupancy` of its grid is occupied on a
    random latent [2, r, r, r, 8] (a random decoder would otherwise fill half of it)."""
    z = jax.random.normal(jax.random.PRNGKey(seed), (2,) + (resolution,) * 3 + (decoder.latent_channels,))
    logits = jax.jit(decoder.apply)(params, z).astype(jnp.float32)
    out = jax.tree.map(lambda a: a, params)
    out["params"]["out_layer_2"]["bias"] = params["params"]["out_layer_2"]["bias"] - jnp.quantile(logits, 1 - occupancy)
    return out


def pipeline_from_config(cfg, params_for):
    """TrellisPipeline of a sampling config (experiments/sample/*.py): every network of `cfg.models`
    built with the config's compute dtype (block stacks scanned when cfg.scan_blocks); params_for(role, module) -> its params (random, loaded or
    abstract ShapeDtypeStructs)."""
    from trellis_jax.sampling.euler import SamplerConfig
    from trellis_jax.sampling.pipeline import TrellisPipeline
    from trellis_jax.models.registry import model_from_config

    if cfg.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config compute_dtype must be 'float32' or 'bfloat16', got {cfg.compute_dtype!r}")
    dtype = getattr(jnp, cfg.compute_dtype)
    models = {}
    for role, m in cfg.models.items():
        module = model_from_config(m, dtype=dtype)
        if cfg.get("scan_blocks") and hasattr(module, "scan_blocks"):  # flows and SLat VAE trunks: one compiled block each
            module = module.clone(scan_blocks=True)
        models[role] = (module, params_for(role, module))
    return TrellisPipeline(
        models, SamplerConfig.from_params(cfg.ss_sampler.to_dict()), SamplerConfig.from_params(cfg.slat_sampler.to_dict()),
        capacity=int(cfg.capacity), formats=tuple(cfg.formats), num_stage2_sizes=int(cfg.num_stage2_sizes),
        min_stage2_size=int(cfg.min_stage2_size))


def write_random_pipeline(directory, seed: int = 0, occupancy: float = 0.04, steps: int = 4, kind: str = "image",
                          mesh: bool = False) -> Path:
    """Tiny pipeline conditioned on `kind` ('image': a tiny random DINOv2; 'text': a tiny random CLIP),
    with a Gaussian decoder (and a mesh decoder with `mesh`). The SS decoder's output bias is calibrated
    on a random latent so about `occupancy` of the grid is occupied (a random decoder would otherwise
    fill half of it)."""
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    roles = dict(TINY, **({"slat_decoder_mesh": TINY_MESH} if mesh else {}))
    models = {}
    for i, (role, (name, cls, args)) in enumerate(roles.items()):
        m = build_model(cls, args)
        p = jax.jit(functools.partial(_perturbed_init, m))(_key(seed + i), _key(seed + 100 + i))
        if role == "sparse_structure_decoder":
            p = calibrate_occupancy(m, p, occupancy, seed)
        models[role] = (name, cls, args, p)
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": steps, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    save_pipeline(directory, kind, models, ss_sampler=sampler, slat_sampler=sampler,
                  cond_encoder={"kind": kind, "arch": "tiny", "seed": seed})
    return Path(directory)
