"""bf16 vs fp32 forward error of every network, on its tiny config with random weights.

    python -m trellis_jax.tools.precision_report [--seed 0]

The same fp32 parameters run twice: once with `dtype=float32`, once with `dtype=bfloat16` (compute
dtype; parameters stay fp32). Prints per output `max_abs_err`, `max|ref|` and `rel_err = max_abs_err /
max|ref|`. Inputs and outputs use the fixture layout (tools/fixture_runner.py).
"""
from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp
import numpy as np

from trellis_jax.config_loader import load_config
from trellis_jax.models.registry import model_from_config
from trellis_jax.tools.fixture_runner import run_fixture
from trellis_jax.tools.synthetic import random_params, reference_inputs

TINY_SPECS = [
    "experiments/models/ss_vae.py:tiny_enc", "experiments/models/ss_vae.py:tiny_dec",
    "experiments/models/ss_flow.py:tiny", "experiments/models/slat_flow.py:tiny",
    "experiments/models/slat_vae.py:tiny_enc", "experiments/models/slat_vae.py:tiny_dec_gs",
    "experiments/models/slat_vae.py:tiny_dec_rf", "experiments/models/slat_vae.py:tiny_dec_mesh",
]


def bf16_errors(spec: str, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{output key: (max_abs_err, max|fp32 output|)} of the bf16 forward against the fp32 one."""
    cfg = load_config(spec)
    ref_model = model_from_config(cfg)
    bf16_model = model_from_config(cfg, dtype=jnp.bfloat16)
    params = random_params(ref_model, seed, std=0.1)
    io = reference_inputs(ref_model, np.random.default_rng(seed))
    ref, got = run_fixture(ref_model, params, io), run_fixture(bf16_model, params, io)
    out = {}
    for k, r in ref.items():
        if k == "out_coords":
            if not np.array_equal(r, got[k]):
                raise AssertionError(f"{spec}: bf16 changed the output voxel set")
            continue
        r, g = np.asarray(r, np.float32), np.asarray(got[k], np.float32)
        out[k] = (float(np.max(np.abs(g - r))), float(np.max(np.abs(r))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", help="config specs 'file.py:variant' (default: every tiny config)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for spec in args.specs or TINY_SPECS:
        for key, (err, scale) in bf16_errors(spec, args.seed).items():
            rel = err / scale if scale else float("nan")
            print(f"{spec.split('/')[-1]:<26} {key:<16} max_abs_err={err:.3e} max|ref|={scale:.3e} rel_err={rel:.3e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
