"""`trellis-jax eval` generation quality (the paper's Table 2, CLIP and DINOv2 columns): sample the
held-out prompts with a pipeline directory, render, score.

    trellis-jax eval --config experiments/eval/generation.py:tiny --workdir W
"""
import ml_collections

from experiments.eval._common import base


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = base(variant)
    c.tasks = ("generation",)
    c.pipeline = "outputs/demo/weights_image" if variant == "tiny" else "TRELLIS-image-large"  # pipeline.json + ckpts/
    c.capacity = 8192 if variant == "tiny" else 32768  # stage-2 voxel capacity of the sampler
    c.batch_size = 4             # prompts sampled per jitted call
    c.prompt_view = 0            # image pipelines: the record's condition render used as the prompt
    if variant == "toys4k":
        c.num_assets = 1250      # the paper's random Toys4k subset size (its ids were not released)
        c.num_views = 8          # not released; views of each sample rendered for CLIP / FD / KD
        c.paper = {"TRELLIS L (paper, image-to-3D)": dict(clip_score=85.77, fd_dinov2=67.21, kd_dinov2_x100=0.72),
                   "TRELLIS L (paper, text-to-3D)": dict(clip_score=26.60, fd_dinov2=238.60, kd_dinov2_x100=4.24)}
    return c
