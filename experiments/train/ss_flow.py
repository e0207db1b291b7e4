"""G_S training: rectified flow on the 16³×8 sparse-structure latents (docs/reference_facts.md#training).

Variants: img_L, txt_B, txt_L, txt_XL (released model args; grain latent dataset at --config.data.path,
frozen DINOv2 / CLIP conditions) and `tiny` (8³ latents, synthetic data and condition tokens; CPU).
"""
from pathlib import Path

import ml_collections

from experiments.train._base import flow_run


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = flow_run("ss_flow", variant, dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0))
    if variant == "tiny":
        c.model.args.use_fp16 = False
    else:
        # Measured with `trellis-jax aot` (img_L, batch 256 on v5p:4x4x4): data-parallel without remat needs
        # 90.7 GiB per chip (its [B, 16, 4096, 4096] attention probabilities kept for every block); FSDP over all
        # chips + a rematerialised block needs 14.6 GiB. Scanned blocks (model.scan_blocks) compile in 2 min
        # instead of 12-15 but the TPU compiler then needs 88.5 GiB per chip, so the blocks stay unrolled.
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.model.args.use_checkpoint = True
    return c
