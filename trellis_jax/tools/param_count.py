"""Print exact parameter counts of model configs without allocating them (jax.eval_shape).

    python -m trellis_jax.tools.param_count --all
    python -m trellis_jax.tools.param_count experiments/models/slat_flow.py:img_L ...
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from trellis_jax.checkpoints.official import param_template
from trellis_jax.config_loader import all_model_specs, load_config
from trellis_jax.models.registry import model_from_config


def count_params(module) -> tuple[int, int]:
    """(number of parameters, number of tensors) of a Flax module."""
    t = param_template(module)
    return sum(int(np.prod(v.shape)) for v in t.values()), len(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help="config specs 'file.py:variant'")
    ap.add_argument("--all", action="store_true", help="every released checkpoint")
    args = ap.parse_args(argv)
    specs = (all_model_specs() if args.all else []) + args.configs
    if not specs:
        ap.error("give config specs or --all")
    for spec in specs:
        cfg = load_config(spec)
        n, k = count_params(model_from_config(cfg))
        print(f"{cfg.checkpoint:<40} {cfg.class_name:<26} {n:>15,} params {k:>5} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
