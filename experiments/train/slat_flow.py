"""G_L training: rectified flow on sparse structured latents (SPEC §7.1–7.2, §8.6 normalisation).

Variants: img_L, txt_B, txt_L, txt_XL (released model args; grain latent dataset at --config.data.path
padded to `data.capacity` voxels, frozen DINOv2 / CLIP conditions) and `tiny` (synthetic voxel sets of
at most 128 voxels on the 64³ grid, synthetic condition tokens; CPU).
"""
from pathlib import Path

import ml_collections

from experiments.train._base import condition, tiny_run
from trellis_jax.config_loader import load_config
from trellis_jax.slat_normalization import SLAT_MEAN, SLAT_STD

_HERE = Path(__file__).resolve().parent
_RELEASED = {"img_L": ("image", 256), "txt_B": ("text", 512), "txt_L": ("text", 256), "txt_XL": ("text", 256)}


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    if variant not in list(_RELEASED) + ["tiny"]:
        raise KeyError(f"unknown slat_flow training variant {variant!r}; choose from {sorted(list(_RELEASED) + ['tiny'])}")
    c = load_config(str(_HERE / "_base.py"))
    c.task = "slat_flow"
    c.model = load_config(f"{_HERE.parent / 'models' / 'slat_flow.py'}:{variant}")
    c.p_uncond = 0.1
    c.t_mean, c.t_std = 1.0, 1.0
    c.slat_normalization = ml_collections.ConfigDict(dict(mean=list(SLAT_MEAN), std=list(SLAT_STD)))
    # capacity: voxels per asset after padding (the reference keeps assets with <= 32768 voxels)
    c.data = ml_collections.ConfigDict(dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0, capacity=32768))
    if variant == "tiny":
        tiny_run(c, batch_size=4, total_steps=200)
        c.data.capacity = 128
        c.cond = condition("random")
    else:
        kind, c.batch_size = _RELEASED[variant]
        c.compute_dtype = "bfloat16"
        c.cond = condition(kind)
    return c
