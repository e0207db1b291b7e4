"""Sparse-structure VAE configs (64³ occupancy <-> 16³×8): released encoder/decoder, plus tiny ones.

Variants: `enc`, `dec` (released `ss_enc_conv3d_16l8_fp16` / `ss_dec_conv3d_16l8_fp16`), `tiny_enc`, `tiny_dec`.
"""
import ml_collections

VARIANTS = {
    "enc": ("ss_enc_conv3d_16l8_fp16", "SparseStructureEncoder",
            dict(in_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[32, 128, 512], use_fp16=True)),
    "dec": ("ss_dec_conv3d_16l8_fp16", "SparseStructureDecoder",
            dict(out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[512, 128, 32], use_fp16=True)),
    "tiny_enc": ("ss_enc_tiny", "SparseStructureEncoder",
                 dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16, 32], use_fp16=False)),
    "tiny_dec": ("ss_dec_tiny", "SparseStructureDecoder",
                 dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8], use_fp16=False)),
}


def get_config(variant: str = "enc") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise KeyError(f"unknown ss_vae variant {variant!r}; choose from {sorted(VARIANTS)}")
    name, cls, args = VARIANTS[variant]
    return ml_collections.ConfigDict({"checkpoint": name, "class_name": cls, "args": args})
