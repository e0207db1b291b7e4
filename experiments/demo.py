"""The embedded end-to-end default (`trellis-jax demo`): built-in data -> tiny models -> 3D assets on a CPU.

Everything is small so the whole job fits in ~15 minutes on 2 CPU cores: a 32³ voxel grid (SS latent
8³×8), width-64 two-block networks, 12 views at 64², 4 Gaussians per voxel, 12 sampling steps. The
condition encoders are DINOv2 / CLIP architectures with RANDOM frozen weights (no pretrained weights
can be downloaded here); the job says so in its output.
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out = "outputs/demo"
    c.seed = 0
    c.num_assets = 24            # procedural built-in assets (captions included)
    c.held_out = 4               # the last ones are not trained on: their images / captions are the prompts
    c.voxel_resolution = 32
    c.conditions = ("image", "text")
    c.data = ml_collections.ConfigDict(dict(num_views=12, resolution=64, num_cond_views=4, cond_resolution=64, store_views=12))
    c.batch_size = 4
    c.ss_vae_batch_size = 2      # dense 32³ 3D convs dominate the CPU time of the SS VAE
    c.slat_flow_batch_size = 2   # G_L cost grows with the padded rows: small batches in length buckets
    c.capacity_buckets = (2048, 4096, 6144)
    c.lr = 1e-3                  # the reference uses 1e-4 for long runs; a few hundred demo steps need more
    c.steps = ml_collections.ConfigDict(dict(ss_vae=100, slat_vae=120, ss_flow=300, slat_flow=100))
    c.render_resolution = 48     # SLat-VAE supervision renders
    c.sampler = ml_collections.ConfigDict(dict(steps=12, cfg_strength=3.0, cfg_interval=(0.5, 1.0), rescale_t=3.0))
    c.sample_capacity = 8192
    c.models = ml_collections.ConfigDict(dict(
        ss_enc=dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16, 32]),
        ss_dec=dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8]),
        slat_enc=dict(resolution=32, in_channels=64, model_channels=64, latent_channels=8, num_blocks=2, num_heads=2, window_size=8),
        slat_dec_gs=dict(resolution=32, model_channels=64, latent_channels=8, num_blocks=2, num_heads=2, window_size=8,
                         representation_config=dict(num_gaussians=4, voxel_size=1.5, perturb_offset=True, scaling_bias=4e-3,
                                                    opacity_bias=0.1, scaling_activation="softplus")),
        ss_flow=dict(resolution=8, in_channels=8, out_channels=8, model_channels=64, num_blocks=2, num_heads=4, patch_size=1,
                     qk_rms_norm=True),
        slat_flow=dict(resolution=32, in_channels=8, out_channels=8, model_channels=64, num_blocks=2, num_heads=4,
                       patch_size=2, io_block_channels=[16], num_io_res_blocks=2, qk_rms_norm=True),
    ))
    if variant == "smoke":  # seconds-scale run for tests / the notebook in CI
        c.num_assets, c.held_out = 6, 2
        c.steps = ml_collections.ConfigDict(dict(ss_vae=3, slat_vae=3, ss_flow=3, slat_flow=3))
        c.sampler.steps = 2
        c.data.num_views, c.data.store_views = 4, 4
        c.batch_size = c.slat_flow_batch_size = 2
        c.conditions = ("image",)
    elif variant != "default":
        raise KeyError(f"unknown demo variant {variant!r} (default, smoke)")
    return c
