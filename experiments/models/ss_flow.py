"""G_S (sparse-structure flow) configs: released image-large and text B/L/XL, plus `tiny` for CPU.

    get_config("img_L") -> ConfigDict(checkpoint=..., class_name=..., args={...official json args...})
"""
import ml_collections

_BASE = dict(resolution=16, in_channels=8, out_channels=8, num_head_channels=64, mlp_ratio=4, patch_size=1,
             pe_mode="ape", use_fp16=True, use_checkpoint=False, share_mod=False, qk_rms_norm=True, qk_rms_norm_cross=False)
VARIANTS = {
    "img_L": ("ss_flow_img_dit_L_16l8_fp16", dict(model_channels=1024, cond_channels=1024, num_blocks=24, num_heads=16)),
    "txt_B": ("ss_flow_txt_dit_B_16l8_fp16", dict(model_channels=768, cond_channels=768, num_blocks=12, num_heads=12)),
    "txt_L": ("ss_flow_txt_dit_L_16l8_fp16", dict(model_channels=1024, cond_channels=768, num_blocks=24, num_heads=16)),
    "txt_XL": ("ss_flow_txt_dit_XL_16l8_fp16", dict(model_channels=1280, cond_channels=768, num_blocks=28, num_heads=16, qk_rms_norm_cross=True)),
    # tiny: an 8³ latent (512 tokens) so CPU tests run in seconds; the released models use 16³.
    "tiny": ("ss_flow_tiny", dict(resolution=8, model_channels=64, cond_channels=32, num_blocks=2, num_heads=4, use_fp16=False)),
}


def get_config(variant: str = "img_L") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise KeyError(f"unknown ss_flow variant {variant!r}; choose from {sorted(VARIANTS)}")
    name, over = VARIANTS[variant]
    return ml_collections.ConfigDict({"checkpoint": name, "class_name": "SparseStructureFlowModel", "args": {**_BASE, **over}})
