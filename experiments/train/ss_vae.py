"""Sparse-structure VAE training: 64³ occupancy, Dice + 1e-3·KL (SPEC §7.3).

Variants: `released` (ss_enc/ss_dec_conv3d_16l8 args, grain voxel dataset at --config.data.path, 64³)
and `tiny` (tiny encoder/decoder on synthetic 32³ ellipsoid shells; CPU).
"""
from pathlib import Path

import ml_collections

from experiments.train._base import tiny_run
from trellis_jax.config_loader import load_config

_HERE = Path(__file__).resolve().parent


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    if variant not in ("released", "tiny"):
        raise KeyError(f"unknown ss_vae training variant {variant!r}; choose from ['released', 'tiny']")
    c = load_config(str(_HERE / "_base.py"))
    c.task = "ss_vae"
    models = _HERE.parent / "models" / "ss_vae.py"
    enc, dec = ("enc", "dec") if variant == "released" else ("tiny_enc", "tiny_dec")
    c.model = ml_collections.ConfigDict(dict(encoder=load_config(f"{models}:{enc}"), decoder=load_config(f"{models}:{dec}")))
    c.loss = ml_collections.ConfigDict(dict(dice_weight=1.0, bce_weight=0.0, kl_weight=1e-3))
    c.data = ml_collections.ConfigDict(dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0, resolution=64))
    c.batch_size = 128                 # reference: 4 per GPU; GPU count unpublished (32 assumed)
    if variant == "tiny":
        tiny_run(c, batch_size=2, total_steps=100)
        c.data.resolution = 32
    else:
        c.compute_dtype = "bfloat16"
    return c
