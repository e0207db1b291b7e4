"""Composed two-stage sampler configs (G_S -> SS decoder -> G_L -> SLat decoders), for `trellis-jax aot --job sample`.

Variants: `img_L` (the image-large pipeline: released model args, pipeline.json sampler settings —
25 Euler steps, CFG 5.0 in [0.5, 1], rescale_t 3 — capacity 32,768 voxels, all three decoders, DINOv2
ViT-L/14-reg condition tokens [1374, 1024]) and `tiny` (the random test pipeline's networks,
`trellis_jax.sampling.random_pipeline.TINY`). `weights_dtype` / `compute_dtype` set what the networks
hold and compute in ('bfloat16' halves the weights; the reference samples its trunks in fp16); `scan_blocks`
compiles each block stack (the flows', the SLat decoders') as one nn.scan.
"""
from pathlib import Path

import ml_collections

from experiments.train._base import condition
from trellis_jax.config_loader import load_config

_MODELS = Path(__file__).resolve().parent.parent / "models"
_IMAGE_LARGE = {
    "sparse_structure_flow_model": "ss_flow.py:img_L",
    "sparse_structure_decoder": "ss_vae.py:dec",
    "slat_flow_model": "slat_flow.py:img_L",
    "slat_decoder_gs": "slat_vae.py:dec_gs",
    "slat_decoder_rf": "slat_vae.py:dec_rf",
    "slat_decoder_mesh": "slat_vae.py:dec_mesh",
}
_SAMPLER = dict(steps=25, cfg_strength=5.0, cfg_interval=(0.5, 1.0), rescale_t=3.0)


def get_config(variant: str = "img_L") -> ml_collections.ConfigDict:
    if variant not in ("img_L", "tiny"):
        raise KeyError(f"unknown sample variant {variant!r}; choose from ['img_L', 'tiny']")
    c = ml_collections.ConfigDict()
    c.job = "sample"
    c.batch_size = 1
    c.weights_dtype = "bfloat16"
    c.compute_dtype = "bfloat16"
    c.scan_blocks = True               # every block stack under one nn.scan (same numbers, one block compiled)
    c.ss_sampler = ml_collections.ConfigDict(_SAMPLER)
    c.slat_sampler = ml_collections.ConfigDict(_SAMPLER)
    c.num_stage2_sizes = 3             # stage 2 runs at the smallest capacity/2^k holding the batch's voxels
    c.min_stage2_size = 256
    if variant == "img_L":
        c.models = ml_collections.ConfigDict({role: load_config(f"{_MODELS / spec}") for role, spec in _IMAGE_LARGE.items()})
        c.capacity = 32768
        c.formats = ("gaussian", "radiance_field", "mesh")
        c.cond = condition("image")
    else:
        from trellis_jax.sampling.random_pipeline import TINY

        c.models = ml_collections.ConfigDict({role: {"class_name": cls, "args": args} for role, (_, cls, args) in TINY.items()})
        c.capacity = 512
        c.formats = ("gaussian",)
        c.cond = condition("random")
        c.weights_dtype = c.compute_dtype = "float32"
        c.ss_sampler.steps = c.slat_sampler.steps = 4
    return c
