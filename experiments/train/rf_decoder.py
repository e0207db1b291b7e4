"""Radiance-field decoder training on frozen-encoder latents: volume-rendered L1 + 0.2·(1 − SSIM) (docs/reference_facts.md#losses).

Variants: `released` (slat_enc / slat_dec_rf_swin8_B_64l8r16 args, 64³, 512² views, batch 4 per GPU
with batch_split 2; the frozen encoder's weights at --config.model.encoder_checkpoint=DIR/ckpts/NAME)
and `tiny` (tiny encoder and decoder at 16³, synthetic textured ellipsoids rendered at 32²; CPU).
Without an encoder checkpoint the frozen encoder is randomly initialised and the run says so.
"""
import ml_collections

from experiments.train._base import tiny_run, vae_run


def decoder_config(task: str, decoder_variant: str, variant: str) -> ml_collections.ConfigDict:
    """Shared by rf_decoder.py and mesh_decoder.py: frozen encoder + `decoder_variant` of models/slat_vae.py."""
    c = vae_run(task, variant, "slat_vae", decoder_variant)
    c.model.encoder_checkpoint = ""
    c.loss = ml_collections.ConfigDict(dict(ssim_weight=0.2))
    c.data = ml_collections.ConfigDict(dict(kind="grain", path="", worker_count=4, synthetic_seed=0, max_corrupt_records=0,
                                            capacity=32768, views_per_asset=1))  # views per asset per step (grain)
    c.render = ml_collections.ConfigDict(dict(image_size=512))
    c.batch_size = 128                 # reference: 4 per GPU; GPU count unpublished (32 assumed)
    if variant == "tiny":
        tiny_run(c, batch_size=2, total_steps=60)
        for m in (c.model.encoder, c.model.decoder):
            m.args.resolution = 16
        c.data.capacity = 256
        c.render.image_size = 32
    return c


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = decoder_config("rf_decoder", "dec_rf", variant)
    c.batch_split = 2 if variant == "released" else 1
    c.render.sample_capacity = 256     # occupied samples per ray (16 per voxel crossed); overflow is logged
    c.render.ray_chunk = 4096 if variant == "released" else 1024
    return c
