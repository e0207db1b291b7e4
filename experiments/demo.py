"""The embedded end-to-end default (`trellis-jax demo`): built-in data -> tiny models -> 3D assets on a CPU.

Everything is small: a 32³ voxel grid (SS latent 8³×8), width-64 two-block networks (the mesh decoder's
trunk is width 256, the least its GroupNorm32 subdivision blocks allow), 12 views at 64², 4 Gaussians per
voxel, 12 sampling steps. Before the mesh decoder the job took ~12 min on an idle 2-core CPU; the mesh
decoder decodes 64 fine FlexiCubes cubes per voxel (~400K for a 6K-voxel asset), about 48 s per step on a
shared 2-core CPU at load average ~10, hence only 20 steps (the whole job is not yet timed idle). Every
model is trained by the one trainer (`trellis-jax train`): each stage is a training config of
experiments/train/ (`tiny` variant) plus the overrides below (demo sizes; the data set, seed, steps
and learning rate are set by the demo). The condition encoders are DINOv2 / CLIP architectures with
RANDOM frozen weights (no pretrained weights can be downloaded here); the job says so in its output.
"""
import ml_collections

# Training config and demo-size overrides (`--config.KEY=VALUE` syntax) per stage, applied after the demo's
# common settings (seed, lr, batch, steps, data), so a stage may set its own optimizer keys.
STAGES = {
    "ss_vae": ("experiments/train/ss_vae.py:tiny", []),
    "slat_vae": ("experiments/train/slat_vae.py:tiny", ["model.encoder.args.resolution=32", "model.decoder.args.resolution=32"]),
    "ss_flow": ("experiments/train/ss_flow.py:tiny", []),
    "slat_flow": ("experiments/train/slat_flow.py:tiny", ["model.args.resolution=32"]),
    # frozen encoder: the slat_vae stage's trained one (model.encoder_checkpoint, set by the demo)
    "mesh_decoder": ("experiments/train/mesh_decoder.py:tiny", ["model.encoder.args.resolution=32", "model.decoder.args.resolution=32",
                     # a synthetic-data probe at these sizes: the first full-lr Adam step moved the surface so far that the
                     # depth term jumped 30x (grad norm 185); on the demo data the loss still swings 0.2-12 between steps
                     # with the warm-up (measured: 20 steps, mean of the first 5 = last 5 = 4.6)
                     "optimizer.warmup_steps=5"]),
}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out = "outputs/demo"
    c.seed = 0
    c.num_assets = 24            # procedural built-in assets (captions included)
    c.held_out = 4               # the last ones are not trained on: their images / captions are the prompts
    c.voxel_resolution = 32
    c.conditions = ("image", "text")
    c.data = ml_collections.ConfigDict(dict(num_views=12, resolution=64, num_cond_views=4, cond_resolution=64, store_views=12))
    c.stages = ml_collections.ConfigDict({k: dict(config=spec, overrides=list(ov)) for k, (spec, ov) in STAGES.items()})
    c.batch_size = ml_collections.ConfigDict(dict(
        ss_vae=2,                # dense 32³ 3D convs dominate the CPU time of the SS VAE
        slat_vae=2, ss_flow=4,
        slat_flow=2,             # G_L cost grows with the padded rows: small batches
        mesh_decoder=1))         # 64 fine cubes per voxel: FlexiCubes + rasterisation of one asset per step
    c.capacity_buckets = (2048, 4096, 6144)  # sparse stages pad to the smallest bucket that holds every asset
    c.lr = 1e-3                  # the reference uses 1e-4 for long runs; a few hundred demo steps need more
    c.steps = ml_collections.ConfigDict(dict(ss_vae=100, slat_vae=120, ss_flow=300, slat_flow=100, mesh_decoder=20))
    c.render_resolution = 48     # SLat-VAE supervision renders
    c.mesh_render_resolution = 64  # mesh-decoder supervision renders (mask / depth / normal / colour; the stored views' size)
    c.sampler = ml_collections.ConfigDict(dict(steps=12, cfg_strength=3.0, cfg_interval=(0.5, 1.0), rescale_t=3.0))
    c.sample_capacity = 8192
    # per-asset files (trellis_jax/export/asset.py AssetOptions): the reference's 120-frame orbit at 15 fps and
    # mesh.glb textured from the Gaussians by the fast bake; demo-size bake (the reference: 100 views at 512², a
    # 1024² texture) since a 32³ asset has little detail to bake and 8 assets × 100 CPU renders cost minutes each
    c.assets = ml_collections.ConfigDict(dict(simplify=0.95, texture_size=512, bake_mode="fast", bake_views=24,
                                              bake_resolution=256, video_frames=120, video_resolution=512))
    c.evaluate = True            # end with `trellis-jax eval` on the held-out assets (tables printed, OUT/eval/)
    if variant == "smoke":  # seconds-scale run for tests / the notebook in CI
        c.num_assets, c.held_out = 6, 2
        c.steps = ml_collections.ConfigDict(dict(ss_vae=3, slat_vae=3, ss_flow=3, slat_flow=3, mesh_decoder=2))
        c.mesh_render_resolution = 32
        c.sampler.steps = 2
        c.data.num_views, c.data.store_views = 4, 4
        c.batch_size.slat_vae, c.batch_size.ss_flow = 1, 2
        c.conditions = ("image",)
        c.assets.video_frames, c.assets.video_resolution = 8, 64
        c.assets.texture_size, c.assets.bake_views, c.assets.bake_resolution = 64, 8, 64
        c.evaluate = False       # the eval command has its own end-to-end tests (tests/test_eval_cli.py, slow)
    elif variant != "default":
        raise KeyError(f"unknown demo variant {variant!r} (default, smoke)")
    return c
