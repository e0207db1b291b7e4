"""SLat VAE configs: released encoder and Gaussian / radiance-field / mesh decoders, plus tiny ones.

Variants: enc, dec_gs, dec_rf, dec_mesh, and tiny_enc, tiny_dec_gs, tiny_dec_rf, tiny_dec_mesh.
"""
import ml_collections

_TRUNK = dict(resolution=64, model_channels=768, latent_channels=8, num_blocks=12, num_heads=12, mlp_ratio=4,
              attn_mode="swin", window_size=8, pe_mode="ape", use_fp16=True, use_checkpoint=False, qk_rms_norm=False)
_TINY = dict(_TRUNK, model_channels=64, num_blocks=2, num_heads=2, use_fp16=False)
_GS = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
       "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
       "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}
VARIANTS = {
    "enc": ("slat_enc_swin8_B_64l8_fp16", "SLatEncoder", dict(_TRUNK, in_channels=1024)),
    "dec_gs": ("slat_dec_gs_swin8_B_64l8gs32_fp16", "SLatGaussianDecoder", dict(_TRUNK, representation_config=_GS)),
    "dec_rf": ("slat_dec_rf_swin8_B_64l8r16_fp16", "SLatRadianceFieldDecoder", dict(_TRUNK, representation_config={"rank": 16, "dim": 8})),
    "dec_mesh": ("slat_dec_mesh_swin8_B_64l8m256c_fp16", "SLatMeshDecoder", dict(_TRUNK, representation_config={"use_color": True})),
    "tiny_enc": ("slat_enc_tiny", "SLatEncoder", dict(_TINY, in_channels=64)),
    "tiny_dec_gs": ("slat_dec_gs_tiny", "SLatGaussianDecoder", dict(_TINY, representation_config=dict(_GS, num_gaussians=4))),
    "tiny_dec_rf": ("slat_dec_rf_tiny", "SLatRadianceFieldDecoder", dict(_TINY, representation_config={"rank": 4, "dim": 4})),
    # GroupNorm32 in the subdivision blocks needs model_channels/8 divisible by 32.
    "tiny_dec_mesh": ("slat_dec_mesh_tiny", "SLatMeshDecoder", dict(_TINY, model_channels=256, num_heads=4, representation_config={"use_color": True})),
}


def get_config(variant: str = "enc") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise KeyError(f"unknown slat_vae variant {variant!r}; choose from {sorted(VARIANTS)}")
    name, cls, args = VARIANTS[variant]
    return ml_collections.ConfigDict({"checkpoint": name, "class_name": cls, "args": args})
