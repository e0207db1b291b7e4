"""Mesh decoder training on frozen-encoder latents: FlexiCubes + rasterised mask/depth/normal/colour and the
reference's regularisers (docs/reference_facts.md#losses).

Variants: `released` (slat_enc / slat_dec_mesh_swin8_B_64l8m256c args: 64³ latents, 256³ FlexiCubes, 512²
views, batch 4 per GPU with batch_split 4; the frozen encoder's weights at
--config.model.encoder_checkpoint=DIR/ckpts/NAME) and `tiny` (tiny encoder and decoder at 16³ -> 64³
FlexiCubes, synthetic textured ellipsoids rendered at 32²; CPU). Without an encoder checkpoint the frozen
encoder is randomly initialised and the run says so.
"""
from experiments.train.rf_decoder import decoder_config


def get_config(variant: str = "tiny"):
    c = decoder_config("mesh_decoder", "dec_mesh", variant)
    c.batch_split = 4 if variant == "released" else 1
    c.loss.update(dict(tsdf_weight=0.01, depth_weight=10.0, color_weight=0.1, dev_weight=0.5, weights_reg=0.2))
    c.render.tile_capacity = 256 if variant == "released" else 512
    c.render.max_cubes = 0             # FlexiCubes candidate cubes per asset; 0: 64 × data.capacity (all fine voxels)
    if variant == "tiny":  # lr 1e-3 as every tiny run (80 steps: loss 0.063 -> 0.051, mask L1 0.026 -> 0.009)
        c.data.capacity = 128
        c.total_steps = 80
    return c
