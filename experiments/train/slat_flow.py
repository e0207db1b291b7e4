"""G_L training: rectified flow on sparse structured latents (docs/reference_facts.md#training, normalised as in
docs/reference_facts.md#slat-normalisation).

Variants: img_L, txt_B, txt_L, txt_XL (released model args; grain latent dataset at --config.data.path
padded to `data.capacity` voxels, frozen DINOv2 / CLIP conditions) and `tiny` (synthetic voxel sets of
at most 128 voxels on the 64³ grid, synthetic condition tokens; CPU).
"""
from pathlib import Path

import ml_collections

from experiments.train._base import flow_run
from trellis_jax.slat_normalization import SLAT_MEAN, SLAT_STD


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    # capacity: voxels per asset after padding (the reference keeps assets with <= 32768 voxels)
    data = dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0, capacity=32768)
    c = flow_run("slat_flow", variant, data)
    c.slat_normalization = ml_collections.ConfigDict(dict(mean=list(SLAT_MEAN), std=list(SLAT_STD)))
    if variant == "tiny":
        c.data.capacity = 128
    else:
        # Measured with `trellis-jax aot` (img_L, batch 256, capacity 32,768 on v5p:4x4x4): data-parallel without
        # remat does not compile (312.7 GiB of temporaries per chip); FSDP over all chips + scanned, rematerialised
        # blocks still needs 139.4 GiB at 4 samples per chip; 4 micro-batches of 1 per chip need 38.1 GiB.
        c.mesh.data, c.mesh.fsdp = 1, -1
        c.model.args.use_checkpoint = True
        c.model.scan_blocks = True
        c.batch_split = 4
    return c
