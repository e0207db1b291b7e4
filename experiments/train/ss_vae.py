"""Sparse-structure VAE training: 64³ occupancy, Dice + 1e-3·KL (docs/reference_facts.md#losses).

Variants: `released` (ss_enc/ss_dec_conv3d_16l8 args, grain voxel dataset at --config.data.path, 64³)
and `tiny` (tiny encoder/decoder on synthetic 32³ ellipsoid shells; CPU).
"""
import ml_collections

from experiments.train._base import tiny_run, vae_run


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = vae_run("ss_vae", variant, "ss_vae", "dec")
    c.loss = ml_collections.ConfigDict(dict(dice_weight=1.0, bce_weight=0.0, kl_weight=1e-3))
    c.data = ml_collections.ConfigDict(dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0, resolution=64))
    c.batch_size = 128                 # reference: 4 per GPU; GPU count unpublished (32 assumed)
    if variant == "tiny":
        tiny_run(c, batch_size=2, total_steps=100)
        c.data.resolution = 32
    return c
