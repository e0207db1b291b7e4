"""Check this implementation against reference fixtures (format: docs/reference_fixtures.md).

    python -m trellis_jax.tools.check_fixture DIR [DIR ...] [--tol 1e-4]

Each DIR is a network case (model.json + model.safetensors in the official layout, and io.npz), a
sampler case (the same plus sampler.json) or a pipeline case (pipeline.json + ckpts/ + io.npz).
Models are loaded with the official-checkpoint loader, run in fp32, and every output is compared. Prints
`<case> <key> max_abs_err=<float>` per output, then `check_fixture: N passed, M failed`; exits 1 when
any error exceeds the tolerance (or a fixture cannot be run).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from trellis_jax.checkpoints.official import load_model
from trellis_jax.tools.composed_fixtures import case_kind, check_composed
from trellis_jax.tools.fixture_runner import compare, run_fixture


def check_one(case_dir: Path, tol: float) -> tuple[bool, list[str]]:
    if case_kind(case_dir) != "network":
        errs = check_composed(case_dir)
    else:
        module, params = load_model(case_dir / "model")
        with np.load(case_dir / "io.npz") as io:
            errs = compare(run_fixture(module, params, io), io)
    lines = [f"{case_dir.name} {k} max_abs_err={v:.3e}" for k, v in errs.items()]
    return all(v <= tol for v in errs.values()) and bool(errs), lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    passed = failed = 0
    for d in args.dirs:
        try:
            ok, lines = check_one(d, args.tol)
        except Exception as e:  # report and continue with the other fixtures
            ok, lines = False, [f"{d.name} error={type(e).__name__}: {e}"]
            traceback.print_exc(file=sys.stderr)
        print("\n".join(lines), flush=True)
        passed += ok
        failed += not ok
    print(f"check_fixture: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
