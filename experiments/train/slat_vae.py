"""SLat VAE training: SLat encoder + Gaussian decoder, jointly, by differentiable splatting (docs/reference_facts.md#losses).

Loss: L1 + 0.2·(1 − SSIM) + 0.2·LPIPS on one random view per asset (random black/white background)
+ 1e-6·KL + 1e4·mean(Π scale) + 1e-3·mean((1 − opacity)²). LPIPS needs a VGG16 backbone file and the
lpips package's linear layers (--config.loss.lpips_backbone=PATH --config.loss.lpips_linear=PATH);
without a backbone the term is off and the run says so.

Variants: `released` (slat_enc_swin8_B_64l8 + slat_dec_gs_swin8_B_64l8gs32 args, grain dataset with
1024-channel DINOv2 voxel features and stored renders at --config.data.path, 64³, <= 32768 voxels,
512² supervision) and `tiny` (tiny encoder/decoder on synthetic coloured shells on a 16³ grid, 32²
views; CPU).
"""
import ml_collections

from experiments.train._base import tiny_run, vae_run


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = vae_run("slat_vae", variant, "slat_vae", "dec_gs")
    c.loss = ml_collections.ConfigDict(dict(ssim_weight=0.2, lpips_weight=0.2, lpips_backbone="", lpips_linear="", kl_weight=1e-6,
                                            volume_weight=1e4, opacity_weight=1e-3))
    # capacity: voxels per asset after padding (the reference keeps assets with <= 32768 voxels)
    c.data = ml_collections.ConfigDict(dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0,
                                            capacity=32768, render_size=512))
    c.batch_size = 128                 # reference: 4 per GPU, batch_split 2; GPU count unpublished (32 assumed)
    c.batch_split = 2
    if variant == "tiny":
        tiny_run(c, batch_size=2, total_steps=100)
        c.batch_split = 1
        c.data.capacity, c.data.render_size = 256, 32
        for m in (c.model.encoder, c.model.decoder):
            m.args.resolution = 16
    return c
