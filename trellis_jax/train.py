"""Train a TRELLIS model from an ml_collections config (G_S, G_L or the SS VAE).

    python -m trellis_jax.train --config experiments/train/ss_flow.py:tiny --workdir DIR [--config.key=value ...]

The run resumes from DIR's latest checkpoint (params, optimizer, EMA, step, rng, data iterator).
TensorBoard scalars go to DIR/tb, every step's loss to DIR/metrics.jsonl, checkpoints to DIR/checkpoints.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv):
    from trellis_jax.tools.configs import split_config_overrides

    ap = argparse.ArgumentParser(prog="trellis-jax train", description=__doc__.splitlines()[0],
                                 epilog="Any config key can be overridden: --config.optimizer.lr=3e-4 --config.total_steps=200 "
                                        "(unknown keys are an error naming them).")
    ap.add_argument("--config", required=True, help="experiments/train/<file>.py:<variant>")
    ap.add_argument("--workdir", required=True)
    args, rest = ap.parse_known_args(argv)
    overrides = split_config_overrides(rest, ap.error)
    return args, overrides


def main(argv=None) -> int:
    from trellis_jax.tools.configs import apply_overrides, load_config

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = apply_overrides(load_config(args.config), overrides)
    except (KeyError, ValueError, FileNotFoundError) as e:  # unknown variant / key, bad value, missing file
        print(f"train: config error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr, flush=True)
        return 2
    from trellis_jax.training.checkpoint import CheckpointError
    from trellis_jax.training.trainer import NonFiniteError, run

    try:
        run(cfg, args.workdir)
    except (NonFiniteError, CheckpointError) as e:
        print(f"train: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
