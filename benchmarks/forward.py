"""Forward time and memory of four released-size networks at batch 1 on this CPU (random weights).

    python benchmarks/forward.py [--cases gs,ss_dec,gl,gs_dec] [--dtypes fp32,bf16] [--repeats 3]

Cases (released args): `gs` G_S text-base (768 ch, 12 blocks, 16³×8 latent, 77×768 text tokens);
`ss_dec` the SS decoder 16³×8 -> 64³ logits; `gl` G_L text-base on one sphere-shell asset at 64³
(radii 24..27 voxels: 24,856 voxels, 4,640 tokens after the 2× patching); `gs_dec` the Gaussian
decoder on the same voxels. `bf16` runs compute and weights in bfloat16.
Each case runs in its own process (so its peak RSS is its own) and prints: seconds (min / median of
`repeats` calls after compile), compile seconds, XLA's `memory_analysis()` (arguments + temporaries
of the compiled program), the process's peak RSS (JAX_PLATFORMS=cpu unless set), GFLOP/s from the
network's matmul / conv FLOPs as XLA's cost analysis counts the unrolled program (`flop_count`), and
that rate over a 2048² float32 matmul measured first in the same process (the machine's practical roofline).
Block stacks run unrolled, the released layout `generate` loads (`--scan-blocks`: one compiled block per
stack, as a sampling config's `scan_blocks` builds the SLat decoders).
Last line: `forward: <case>_<dtype>=<median s> ...`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ("gs", "ss_dec", "gl", "gs_dec")


def shell_coords(resolution: int = 64, r0: float = 24.0, r1: float = 27.0):
    """Voxels of a spherical shell centred in the grid: int32 [N, 3], argwhere order."""
    import numpy as np

    g = np.stack(np.meshgrid(*(np.arange(resolution),) * 3, indexing="ij"), -1) - (resolution - 1) / 2
    d = np.linalg.norm(g, axis=-1)
    return np.argwhere((d >= r0) & (d < r1)).astype(np.int32)


def build(case: str, dtype_name: str, scan_blocks: bool = False):
    """-> (module, args) for one case; `scan_blocks` compiles one block for a network's whole stack (where
    it has one), as experiments/sample/pipeline.py's `scan_blocks` does."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from trellis_jax.sparse.tensor import SparseTensor
    from trellis_jax.config_loader import load_config
    from trellis_jax.models.registry import model_from_config
    from trellis_jax.tools.synthetic import random_params

    dtype = jnp.bfloat16 if dtype_name == "bf16" else jnp.float32
    spec = {"gs": "ss_flow.py:txt_B", "ss_dec": "ss_vae.py:dec", "gl": "slat_flow.py:txt_B", "gs_dec": "slat_vae.py:dec_gs"}[case]
    module = model_from_config(load_config(str(REPO / "experiments" / "models" / spec)), dtype=dtype)
    if hasattr(module, "scan_blocks"):
        module = module.clone(scan_blocks=scan_blocks)
    params = jax.tree.map(lambda a: a.astype(dtype), random_params(module, std=0.02))
    rng = np.random.default_rng(0)
    if case in ("gs", "ss_dec"):
        z = jnp.asarray(rng.normal(size=(1, 16, 16, 16, 8)), jnp.float32)
        if case == "ss_dec":
            return module, (params, z)
        cond = jnp.asarray(rng.normal(size=(1, 77, 768)), jnp.float32)
        return module, (params, z, jnp.array([0.5], jnp.float32), cond)
    coords = shell_coords()
    packed = np.concatenate([np.zeros((len(coords), 1), np.int32), coords], 1)
    x = SparseTensor.from_packed(packed, rng.normal(size=(len(coords), 8)).astype(np.float32), capacity=len(coords), resolution=64)
    if case == "gs_dec":
        return module, (params, x)
    cond = jnp.asarray(rng.normal(size=(1, 77, 768)), jnp.float32)
    return module, (params, x, jnp.array([0.5], jnp.float32), cond)


def flop_count(module, args) -> float:
    """Matmul and conv FLOPs of the forward with its blocks unrolled and every loop body counted once:
    what XLA's cost analysis counts for the released (unrolled) program, whether or not `module` scans
    its blocks (XLA would count a scanned stack's body once). Traced on abstract params, not compiled."""
    import jax

    from flax import traverse_util

    from trellis_jax.checkpoints.official import param_template
    from trellis_jax.tools.jaxpr_flops import count_flops

    if getattr(module, "scan_blocks", False):
        module = module.clone(scan_blocks=False)
    params = {"params": traverse_util.unflatten_dict(param_template(module))}  # f32 ShapeDtypeStructs
    return count_flops(jax.jit(module.apply).trace(params, *args[1:]).jaxpr).flops_once


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    from timing import time_calls

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / time_calls(lambda _: f(a), repeats).min_s / 1e9


def run_one(case: str, dtype_name: str, repeats: int, scan_blocks: bool = False) -> dict:
    import jax

    from timing import time_calls

    roof = matmul_gflops()  # first: its buffers are freed before the forward's peak, not added to it
    module, args = build(case, dtype_name, scan_blocks)
    flops = flop_count(module, args)
    t0 = time.perf_counter()
    compiled = jax.jit(module.apply).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    timing = time_calls(lambda _: compiled(*args), repeats)
    med = timing.median_s
    gflops = flops / med / 1e9
    return {"case": case, "dtype": dtype_name, "min_s": timing.min_s, "median_s": med, "compile_s": compile_s,
            "xla_args_gib": mem.argument_size_in_bytes / 2**30, "xla_temp_gib": mem.temp_size_in_bytes / 2**30,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "gflops": gflops, "roofline_gflops": roof, "roofline_frac": gflops / roof}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan-blocks", action="store_true", help="scan block stacks (one compiled block) instead of the released unrolled layout")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args.repeats, args.scan_blocks)))
        return 0
    rows = []
    # a CPU measurement: without JAX_PLATFORMS jax also loads libtpu where the `tpu` extra is installed (+0.08 GiB RSS)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    print(f"{'case':>8} {'dtype':>5} {'min s':>7} {'median s':>8} {'compile s':>9} {'XLA args GiB':>12} {'XLA temp GiB':>12} "
          f"{'peak RSS GiB':>12} {'GFLOP/s':>8} {'of matmul':>9}", flush=True)
    for case in args.cases.split(","):
        for dt in args.dtypes.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one", case, dt, "--repeats", str(args.repeats)] + ["--scan-blocks"] * args.scan_blocks,
                                  capture_output=True, text=True, cwd=REPO, env=env)
            if proc.returncode:
                print(f"{case:>8} {dt:>5} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{case:>8} {dt:>5} {r['min_s']:7.2f} {r['median_s']:8.2f} {r['compile_s']:9.1f} {r['xla_args_gib']:12.2f} "
                  f"{r['xla_temp_gib']:12.2f} {r['peak_rss_gib']:12.2f} {r['gflops']:8.1f} {r['roofline_frac']:9.2f}", flush=True)
    print("forward: " + " ".join(f"{r['case']}_{r['dtype']}={r['median_s']:.2f}" for r in rows))
    return 0 if len(rows) == len(args.cases.split(",")) * len(args.dtypes.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
