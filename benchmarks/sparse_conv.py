"""Sparse submanifold conv vs dense `conv_general_dilated` on a 64³ grid (one sample, fp32, CPU).

    python benchmarks/sparse_conv.py [--occupancy 0.08] [--channels 128] [--runs 5] [--layers 8]

Times (median of `--runs` after a warm-up, all jitted):
  dense      conv_general_dilated on the full [1, 64, 64, 64, C] grid (SAME padding)
  nbr_map    `neighbor_map` of the active set (computed once per resolution)
  sparse     `submanifold_conv3d` given the neighbour map (and, for reference, its fwd+bwd)
The neighbour map is reused by every conv at a resolution, so it is reported both in full
(sparse + nbr_map: one conv) and amortised over `--layers` convs. The last line is
`sparse_conv: dense_over_sparse=<dense / (sparse + nbr_map)>` (the unamortised, conservative ratio).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trellis_jax.sparse import neighbor_map, submanifold_conv3d
from timing import time_calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--occupancy", type=float, default=0.08)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--layers", type=int, default=8, help="convs sharing one neighbour map (amortisation)")
    args = p.parse_args()

    R, C = args.resolution, args.channels
    rng = np.random.default_rng(0)
    occupied = rng.random((R, R, R)) < args.occupancy
    coords = np.argwhere(occupied).astype(np.int32)  # sorted (x, y, z), as the reference stores them
    n = len(coords)
    feats = rng.standard_normal((n, C)).astype(np.float32)
    kernel = (rng.standard_normal((27, C, C)) / np.sqrt(27 * C)).astype(np.float32)
    bias = rng.standard_normal((C,)).astype(np.float32)

    coords_j = jnp.asarray(coords)[None]
    feats_j = jnp.asarray(feats)[None]
    mask_j = jnp.ones((1, n), bool)
    dense_in = jnp.zeros((1, R, R, R, C), jnp.float32).at[0, coords[:, 0], coords[:, 1], coords[:, 2]].set(feats)
    dense_kernel = jnp.asarray(kernel).reshape(3, 3, 3, C, C)  # offset index 9·r0 + 3·r1 + r2 -> DHWIO

    @jax.jit
    def dense_conv(x, w, b):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )
        return y + b

    nbr_fn = jax.jit(neighbor_map, static_argnums=2)
    sparse_fn = jax.jit(lambda f, nb, w, b, m: submanifold_conv3d(f, nb, w, b, m))

    nbr = nbr_fn(coords_j, mask_j, 3)
    kernel_j, bias_j = jnp.asarray(kernel), jnp.asarray(bias)
    # Correctness: sparse output equals the dense conv read at the active sites.
    ref = dense_conv(dense_in, dense_kernel, bias_j)[0, coords[:, 0], coords[:, 1], coords[:, 2]]
    got = sparse_fn(feats_j, nbr, kernel_j, bias_j, mask_j)[0]
    err = float(jnp.max(jnp.abs(ref - got)))
    assert err < 1e-3, f"sparse and dense convolutions disagree (max abs err {err})"

    t_dense = time_calls(lambda _: dense_conv(dense_in, dense_kernel, bias_j), args.runs).median_s
    t_nbr = time_calls(lambda _: nbr_fn(coords_j, mask_j, 3), args.runs).median_s
    t_sparse = time_calls(lambda _: sparse_fn(feats_j, nbr, kernel_j, bias_j, mask_j), args.runs).median_s
    sparse_loss = lambda f, nb, w, b, m: jnp.sum(submanifold_conv3d(f, nb, w, b, m) ** 2)  # noqa: E731
    grad_fn = jax.jit(jax.grad(sparse_loss, argnums=(0, 2, 3)))
    t_grad = time_calls(lambda _: grad_fn(feats_j, nbr, kernel_j, bias_j, mask_j), args.runs).median_s
    t_one = t_sparse + t_nbr
    t_amortised = t_sparse + t_nbr / args.layers

    print(f"grid {R}^3, {n} active voxels ({n / R**3:.1%}), C={C}, fp32, {jax.devices()[0].platform}, "
          f"median of {args.runs}; max |sparse-dense| = {err:.2e}")
    print(f"{'op':<34}{'ms':>10}{'dense/op':>10}")
    rows = [
        ("dense conv_general_dilated", t_dense),
        ("neighbour map", t_nbr),
        ("sparse conv (map given)", t_sparse),
        ("sparse conv + map (one layer)", t_one),
        (f"sparse conv + map/{args.layers} (amortised)", t_amortised),
    ]
    for name, t in rows:
        print(f"{name:<34}{1e3 * t:>10.1f}{t_dense / t:>10.2f}")
    print(f"{'sparse conv fwd+bwd (map given)':<34}{1e3 * t_grad:>10.1f}{'':>10}")
    print(f"sparse_conv: dense_over_sparse={t_dense / t_one:.2f}")


if __name__ == "__main__":
    main()
