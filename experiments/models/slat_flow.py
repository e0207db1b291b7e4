"""G_L (structured-latent flow) configs: released image-large and text B/L/XL, plus `tiny` for CPU."""
import ml_collections

_BASE = dict(resolution=64, in_channels=8, out_channels=8, num_head_channels=64, mlp_ratio=4, patch_size=2,
             num_io_res_blocks=2, io_block_channels=[128], pe_mode="ape", use_fp16=True, use_checkpoint=False,
             use_skip_connection=True, share_mod=False, qk_rms_norm=True, qk_rms_norm_cross=False)
VARIANTS = {
    "img_L": ("slat_flow_img_dit_L_64l8p2_fp16", dict(model_channels=1024, cond_channels=1024, num_blocks=24, num_heads=16)),
    "txt_B": ("slat_flow_txt_dit_B_64l8p2_fp16", dict(model_channels=768, cond_channels=768, num_blocks=12, num_heads=12)),
    "txt_L": ("slat_flow_txt_dit_L_64l8p2_fp16", dict(model_channels=1024, cond_channels=768, num_blocks=24, num_heads=16)),
    "txt_XL": ("slat_flow_txt_dit_XL_64l8p2_fp16", dict(model_channels=1280, cond_channels=768, num_blocks=28, num_heads=16,
                                                         io_block_channels=[256], num_io_res_blocks=3)),
    "tiny": ("slat_flow_tiny", dict(model_channels=64, cond_channels=32, num_blocks=2, num_heads=4, io_block_channels=[16], use_fp16=False)),
}


def get_config(variant: str = "img_L") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise KeyError(f"unknown slat_flow variant {variant!r}; choose from {sorted(VARIANTS)}")
    name, over = VARIANTS[variant]
    return ml_collections.ConfigDict({"checkpoint": name, "class_name": "SLatFlowModel", "args": {**_BASE, **over}})
