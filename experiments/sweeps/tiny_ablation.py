"""Tiny G_S ablation on CPU: model width, condition dropout and learning rate (a few dozen steps each).

    python -m trellis_jax.sweep experiments/sweeps/tiny_ablation.py --workdir /tmp/sweep
"""
import ml_collections


def get_sweep() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.base = "experiments/train/ss_flow.py:tiny"
    s.steps = 30
    s.runs = {
        "baseline": [],
        "width32": ["model.args.model_channels=32"],
        "p_uncond0": ["p_uncond=0.0"],
        "lr3e-4": ["optimizer.lr=3e-4"],
    }
    return s
