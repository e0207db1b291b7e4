"""Train a TRELLIS model from an ml_collections config (G_S, G_L or the SS VAE).

    python -m trellis_jax.train --config experiments/train/ss_flow.py:tiny --workdir DIR [--config.key=value ...]

The run resumes from DIR's latest checkpoint (params, optimizer, EMA, step, rng, data iterator).
TensorBoard scalars go to DIR/tb, every step's loss to DIR/metrics.jsonl, checkpoints to DIR/checkpoints.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys


def parse_args(argv):
    from trellis_jax.config_loader import split_config_overrides

    ap = argparse.ArgumentParser(prog="trellis-jax train", description=__doc__.splitlines()[0],
                                 epilog="Any config key can be overridden: --config.optimizer.lr=3e-4 --config.total_steps=200 "
                                        "(unknown keys are an error naming them).")
    ap.add_argument("--config", required=True, help="experiments/train/<file>.py:<variant>")
    ap.add_argument("--workdir", required=True)
    args, rest = ap.parse_known_args(argv)
    overrides = split_config_overrides(rest, ap.error)
    return args, overrides


def main(argv=None) -> int:
    from trellis_jax.config_loader import load_config

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
    except (KeyError, ValueError, FileNotFoundError) as e:  # unknown variant / key, bad value, missing file
        print(f"train: config error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr, flush=True)
        return 2
    from trellis_jax.training.checkpoint import CheckpointError
    from trellis_jax.training.trainer import NonFiniteError, run
    from trellis_jax.workdir_lock import WorkdirLockedError

    try:
        run(cfg, args.workdir)
    except (NonFiniteError, CheckpointError, WorkdirLockedError) as e:
        print(f"train: error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        problem = _write_problem(e)  # read-only or full workdir, however deep orbax/tensorstore wrapped it
        if problem is not None:
            print(f"train: error: cannot write to the workdir {args.workdir}: {problem}", file=sys.stderr, flush=True)
            return 1
        if isinstance(e, (ValueError, KeyError, OSError)):  # config values, data set / config mismatch, corrupt records
            print(f"train: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr, flush=True)
            return 2
        raise
    return 0


_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}


def _write_problem(e: BaseException) -> str | None:
    """'no space left on device' etc. if `e` or one of its causes is an OSError (or names such an error), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:  # (an OSError raised with only a message is an input error)
            return f"{_WRITE_ERRNOS.get(e.errno, e.strerror or str(e))} ({e.filename or e})"
        for code, text in _WRITE_ERRNOS.items():
            if os.strerror(code) in str(e):
                return text
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
