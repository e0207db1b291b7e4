"""Dense 3×3×3 convolution at the SS decoder's shapes: XLA's 3-D conv vs the CPU slab form (fp32, CPU).

    python benchmarks/dense_conv.py [--runs 3] [--shapes 16x512x512,16x512x1024,32x128x256,32x128x128,64x32x32,64x32x1]

Each shape is SxCinxCout (a [1, S, S, S, Cin] input). Rows: seconds (min of `--runs` after a warm-up)
of `lax.conv_general_dilated` in 3-D and of `trellis_jax.modules.dense_conv.conv3d` (on CPU its
x-slab form, what the SS VAE runs), each as a fraction of a 2048² f32 matmul's rate in the same process.
Last line: `dense_conv: slab_over_xla=<total xla s / total slab s>`.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import time_calls
from trellis_jax.modules.dense_conv import conv3d

SHAPES = "16x512x512,16x512x1024,32x128x256,32x128x128,64x32x32,64x32x1"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--shapes", default=SHAPES)
    args = p.parse_args()

    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    roof = 2 * 2048**3 / time_calls(lambda _: mm(a), 5).min_s / 1e9
    xla = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")))
    slab = jax.jit(conv3d)  # on CPU: the slab form
    rng = np.random.default_rng(0)
    print(f"matmul 2048² f32: {roof:.0f} GFLOP/s")
    print(f"{'S x Cin x Cout':>16} {'GFLOP':>6} {'xla s':>7} {'of matmul':>9} {'slab s':>7} {'of matmul':>9} {'max |diff|':>10}")
    totals = [0.0, 0.0]
    for shape in args.shapes.split(","):
        s, cin, cout = (int(v) for v in shape.split("x"))
        x = jnp.asarray(rng.standard_normal((1, s, s, s, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, 3, cin, cout)) / np.sqrt(27 * cin), jnp.float32)
        gflop = 2 * s**3 * 27 * cin * cout / 1e9
        t = [time_calls(lambda _: f(x, w), args.runs) for f in (xla, slab)]
        err = float(jnp.max(jnp.abs(t[0].result - t[1].result)))
        totals = [totals[0] + t[0].min_s, totals[1] + t[1].min_s]
        print(f"{shape:>16} {gflop:6.1f} {t[0].min_s:7.3f} {gflop / t[0].min_s / roof:9.2f} "
              f"{t[1].min_s:7.3f} {gflop / t[1].min_s / roof:9.2f} {err:10.1e}", flush=True)
    print(f"dense_conv: slab_over_xla={totals[0] / totals[1]:.2f}")


if __name__ == "__main__":
    main()
