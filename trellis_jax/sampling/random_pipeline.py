"""Write a small pipeline directory with random weights (official layout), for tests, the notebook
smoke run and benchmarks: nothing to download, seconds to make. NOT a trained model."""
from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from trellis_jax.atomic import atomic_write_text
from trellis_jax.checkpoints import save_model
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


def write_random_pipeline(directory, seed: int = 0, occupancy: float = 0.04, steps: int = 4) -> Path:
    """Tiny image-conditioned pipeline (tiny random DINOv2 condition encoder). The SS decoder's output
    bias is calibrated on a random latent so about `occupancy` of the grid is occupied (a random
    decoder would otherwise fill half of it)."""
    directory = Path(directory)
    for i, (role, (name, cls, args)) in enumerate(TINY.items()):
        m = build_model(cls, args)
        p = nn.meta.unbox(m.init(jax.random.PRNGKey(seed + i), *dummy_inputs(m)))
        p = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.PRNGKey(seed + 100 + i), a.shape), p)
        if role == "sparse_structure_decoder":
            z = jax.random.normal(jax.random.PRNGKey(seed), (2, 8, 8, 8, 8))
            logits = m.apply(p, z)
            p["params"]["out_layer_2"]["bias"] = p["params"]["out_layer_2"]["bias"] - jnp.quantile(logits, 1 - occupancy)
        save_model(directory / "ckpts" / name, cls, args, p)
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": steps, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    atomic_write_text(directory / "pipeline.json", json.dumps({
        "name": "TrellisImageTo3DPipeline",
        "args": {"models": {role: f"ckpts/{name}" for role, (name, _, _) in TINY.items()},
                 "sparse_structure_sampler": sampler, "slat_sampler": sampler,
                 "image_cond_model": "tiny-random", "cond_encoder": {"kind": "image", "arch": "tiny", "seed": seed}},
    }, indent=2))
    return directory
