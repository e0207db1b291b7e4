"""3D window attention (XLA blocked path) vs dense masked attention on surface-like voxel sets.

    python benchmarks/window_attention.py [--lengths 4096 8192 16384 32768] [--runs 5]

One sample, C = 768 (12 heads × 64), window 8, fp32, forward only, all jitted; best of `--runs`
after a warm-up, in wall ms with this process's CPU ms beside it (a contention check: the machine
is shared, and other jobs only ever add wall time). Voxel sets are surface-like: the faces of a
box shell, then nested sphere shells, on a 64³ grid (one voxel thick, as SLat's active voxels
are); the first L distinct voxels.

  window  `sparse_self_attention(q, k, v, window_layout(...))` (sort by window, blocked attention
          over each block's neighbourhood: O(L·window); the layout's gathers included)
  dense   every query against all L keys with the same window mask (`query_chunked_attention`,
          512 queries at a time so the L² logits never sit in memory at once: O(L²) work)

Dense is skipped above `--dense-max` tokens (time, not memory: it grows as L²) and reported as an
L² extrapolation from the largest measured length, marked "est". The last line is
`window_attention: scale_32k_over_4k=<window(32K)/window(4K)> dense_over_window_16k=<dense/window at 16K>`.
An informational line before it times the Pallas kernel in interpret mode (not a speed path on CPU).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trellis_jax.sparse import sparse_self_attention, window_layout
from trellis_jax.sparse.attention import query_chunked_attention, take_rows
from timing import time_calls

HEADS, HEAD_DIM, WINDOW, GRID = 12, 64, 8, 64


def surface_voxels(n: int, grid: int = GRID) -> np.ndarray:
    """n distinct voxels [n, 3] on one-voxel-thick surfaces: a box shell, then sphere shells inward."""
    idx = np.stack(np.meshgrid(*(np.arange(grid),) * 3, indexing="ij"), -1).reshape(-1, 3)
    centre = (grid - 1) / 2
    cheb = np.abs(idx - centre).max(-1)
    dist = np.linalg.norm(idx - centre, axis=-1)
    picked, taken = [], np.zeros(len(idx), bool)
    shells = [np.abs(cheb - (grid / 2 - 2)) < 0.5]  # box faces
    shells += [np.abs(dist - r) < 0.5 for r in range(grid // 2 - 4, 2, -3)]  # nested spheres
    for shell in shells:
        new = shell & ~taken
        picked.append(idx[new])
        taken |= new
        if taken.sum() >= n:
            break
    coords = np.concatenate(picked)
    if len(coords) < n:
        raise ValueError(f"only {len(coords)} surface voxels on a {grid}³ grid; asked for {n}")
    return coords[:n].astype(np.int32)


def best_time(fn, *args, runs: int) -> tuple[float, float]:
    """(min wall seconds, min process CPU seconds) over `runs` calls after a warm-up (see `Timing`)."""
    timing = time_calls(lambda _: fn(*args), runs)
    return timing.min_s, timing.min_cpu_s


@jax.jit
def window_attention(q, k, v, layout):
    return sparse_self_attention(q, k, v, layout)


@jax.jit
def dense_masked_attention(q, k, v, segments):
    return query_chunked_attention(q, k, v, segments, segments, chunk_size=512)


@jax.jit
def pallas_window_attention(q, k, v, layout):
    return sparse_self_attention(q, k, v, layout, impl="pallas")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--runs", type=int, default=5, help="timed calls of the window path (dense: fewer)")
    p.add_argument("--dense-max", type=int, default=16384, help="longest L timed densely (O(L²) time)")
    p.add_argument("--pallas-length", type=int, default=4096, help="L of the interpret-mode line; 0 skips it")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    window_t, dense_t, inputs = {}, {}, {}
    print(f"window attention vs dense masked attention: C={HEADS * HEAD_DIM} ({HEADS} heads), window {WINDOW}, "
          f"{GRID}³ surface voxels, fp32, forward, {jax.devices()[0].platform}; wall ms (CPU ms)")
    print(f"{'L':>7} {'windows':>8} {'max/win':>8} {'window ms':>18} {'dense ms':>22} {'dense/window':>13}")
    for L in args.lengths:
        coords = jnp.asarray(surface_voxels(L))[None]
        mask = jnp.ones((1, L), bool)
        layout = window_layout(coords, mask, WINDOW, 0)
        seg = np.asarray(layout.segment_ids[0])
        q, k, v = (jnp.asarray(rng.standard_normal((1, L, HEADS, HEAD_DIM)), jnp.float32) for _ in range(3))
        inputs[L] = (q, k, v, layout)
        window_t[L], window_cpu = best_time(window_attention, q, k, v, layout, runs=args.runs)
        if L <= args.dense_max:
            segments = take_rows(layout.segment_ids, layout.inv_perm)  # window ids in the original row order
            runs = max(1, args.runs * 4096 // (2 * L))  # O(L²): fewer calls as L grows
            dense_t[L], dense_cpu = best_time(dense_masked_attention, q, k, v, segments, runs=runs)
            dense = f"{dense_t[L] * 1e3:>9.1f} ({dense_cpu * 1e3:>8.1f})"
            ratio = dense_t[L] / window_t[L]
        else:
            base = max(dense_t) if dense_t else None
            est = dense_t[base] * (L / base) ** 2 if base else float("nan")
            dense, ratio = f"{est * 1e3:>9.1f} est{'':>7}", est / window_t[L]
        _, sizes = np.unique(seg, return_counts=True)
        print(f"{L:>7} {len(sizes):>8} {sizes.max():>8} {window_t[L] * 1e3:>8.1f} ({window_cpu * 1e3:>7.1f}) "
              f"{dense:>22} {ratio:>13.1f}", flush=True)

    if args.pallas_length and args.pallas_length in inputs:
        L = args.pallas_length
        t, _ = best_time(pallas_window_attention, *inputs[L], runs=1)
        print(f"pallas block-sparse kernel, interpret mode (informational, not a CPU speed path): "
              f"L={L} {t * 1e3:.0f} ms ({t / window_t[L]:.1f}x XLA window)")

    lo, hi = min(window_t), max(window_t)
    scale = window_t[hi] / window_t[lo] if (lo, hi) == (4096, 32768) else float("nan")
    ratio = dense_t[16384] / window_t[16384] if 16384 in dense_t else float("nan")
    print(f"window_attention: scale_32k_over_4k={scale:.2f} dense_over_window_16k={ratio:.2f}")


if __name__ == "__main__":
    main()
