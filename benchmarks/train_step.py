"""Seconds per step and MFU of one G_L img_L training step on this device (GPU), synthetic data.

    python benchmarks/train_step.py [--tiny] [--config.batch_size=4 ...]

The trainer's real jitted step (`compile_train`: AdamW, adaptive clipping, EMA, donated state) for
`experiments/train/slat_flow.py:img_L` on a one-device mesh, bf16 compute, fp32 masters, synthetic
voxel sets at capacity 32,768 with random condition tokens [1374, 1024]. FLOPs per step are counted on
the jaxpr (`trellis_jax.tools.jaxpr_flops`; attention at the batch's full extent, an upper bound
when samples are shorter) and MFU is against the device's dense bf16 peak. `--tiny`: the tiny config on CPU.
Last line: `device_suite: train_step ... s_per_step=<x> mfu=<y>`.
"""
import argparse
import time

import jax
import numpy as np

from trellis_jax.config_loader import apply_overrides, load_config, split_config_overrides
from trellis_jax.tools.jaxpr_flops import count_flops
from trellis_jax.training import sharding as sh
from trellis_jax.training.trainer import build_task, compile_train

# dense bf16 peak FLOP/s by device kind (substring match)
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="the tiny config on CPU")
    ap.add_argument("--steps", type=int, default=5)
    args, rest = ap.parse_known_args(argv)
    spec = "experiments/train/slat_flow.py:" + ("tiny" if args.tiny else "img_L")
    cfg = load_config(spec)
    cfg.batch_size = 2 if args.tiny else 4
    cfg = apply_overrides(cfg, split_config_overrides(rest, ap.error))
    cfg.cond.kind, cfg.data.kind = "random", "synthetic"  # random tokens of the encoder's shape; no encoder
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
    device = jax.devices()[0]
    mesh = sh.make_mesh(cfg.mesh, [device])
    task = build_task(cfg)
    init_fn, step_fn, _ = compile_train(cfg, task, mesh, sh.rules_from_config(cfg))
    state = init_fn(jax.random.PRNGKey(0))
    batch = sh.shard_batch(task.synthetic_batch(int(cfg.batch_size), 0), mesh)
    flops = count_flops(step_fn.trace(state, batch).jaxpr).flops
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    peak = next((p for k, p in PEAKS.items() if k in device.device_kind), None)
    mfu = f"{flops / step_s / peak:.3f}" if peak else "n/a"
    extent = int(np.max(np.sum(np.asarray(batch["mask"]), axis=1)))
    print(f"device_suite: train_step config={spec} device={device.device_kind!r} batch={cfg.batch_size} "
          f"capacity={task.capacity} max_voxels={extent} compile_s={compile_s:.1f} s_per_step={step_s:.4g} "
          f"tflops_per_step={flops / 1e12:.4g} mfu={mfu} loss={float(m['loss']):.4f}", flush=True)


if __name__ == "__main__":
    main()
