"""Seconds per asset and peak device memory of the image-large composed sampler, random weights (GPU).

    python benchmarks/sampler_large.py [--tiny] [--batches 1 8]

The networks of `experiments/sample/pipeline.py:img_L` (released sizes, bf16 weights and compute, 25 + 25
Euler steps with CFG, Gaussian + radiance-field + mesh decoders, capacity 32,768) with random weights;
the SS decoder's output bias is shifted so ~4 % of the 64³ grid is occupied (~10K voxels, a typical
asset). Condition tokens are random (the DINOv2 encoder is not part of the timing). Per batch size:
compile, then the median of `--repeats` calls. `--tiny`: the tiny config on CPU, batches 1 and 2.
One line per batch: `device_suite: sampler ... s_per_asset=<x> peak_gib=<y>`.
"""
import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.models.registry import dummy_inputs
from trellis_jax.sampling.random_pipeline import calibrate_occupancy, pipeline_from_config
from trellis_jax.config_loader import load_config


def random_params(cfg, occupancy):
    wdt = getattr(jnp, cfg.weights_dtype)

    def params_for(role, module):
        p = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(len(role)), *dummy_inputs(module)))
        p = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.PRNGKey(7), a.shape, a.dtype), p)
        if role == "sparse_structure_decoder":
            p = calibrate_occupancy(module, p, occupancy, resolution=cfg.models.sparse_structure_flow_model.args.resolution)
        return jax.tree.map(lambda a: a.astype(wdt) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)

    return params_for


def peak_gib():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="the tiny sampler config on CPU")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--occupancy", type=float, default=None, help="default 0.04 (img_L 64³: ~10K voxels), tiny 0.01")
    args = ap.parse_args(argv)
    cfg = load_config(f"experiments/sample/pipeline.py:{'tiny' if args.tiny else 'img_L'}")
    batches = args.batches or ([1, 2] if args.tiny else [1, 8])
    occupancy = args.occupancy or (0.01 if args.tiny else 0.04)  # the tiny 32³ grid at 1 %: ~330 of 512 rows
    pipe = pipeline_from_config(cfg, random_params(cfg, occupancy))
    flow = pipe.models["sparse_structure_flow_model"][0]
    for batch in batches:
        cond = jax.random.normal(jax.random.PRNGKey(batch), (batch, int(cfg.cond.tokens), flow.cond_channels))
        neg = jnp.zeros_like(cond)
        t0 = time.perf_counter()
        out = pipe.sample(cond, neg, np.arange(batch), on_error="flag")
        jax.block_until_ready(out["latents"])
        first = time.perf_counter() - t0
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = pipe.sample(cond, neg, np.arange(batch) + 100 * (r + 1), on_error="flag")
            jax.block_until_ready(out["latents"])
            times.append(time.perf_counter() - t0)
        call = float(np.median(times))
        print(f"device_suite: sampler config={'tiny' if args.tiny else 'img_L'} batch={batch} capacity={pipe.capacity} "
              f"formats={','.join(pipe.formats)} weights={cfg.weights_dtype} first_call_s={first:.1f} call_s={call:.3f} "
              f"s_per_asset={call / batch:.3f} stage2_rows={int(out['stage2_rows'])} "
              f"voxels={np.asarray(out['num_voxels']).tolist()} peak_gib={peak_gib():.2f}", flush=True)


if __name__ == "__main__":
    main()
