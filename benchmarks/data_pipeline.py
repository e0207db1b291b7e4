"""Per-asset time of each data-pipeline stage on this machine, at the reference settings.

    python benchmarks/data_pipeline.py [--assets 3] [--views 150] [--resolution 512]
                                       [--cond-views 24] [--cond-resolution 1024] [--no-vitl]

Runs the real stages (ingest, pyrender, SAT voxeliser, jitted feature projection, PNG record
encoding, ArrayRecord write) on built-in assets (procedural + pybullet meshes when available) with the
tiny random DINOv2 stand-in, timed on a second pass over the assets (steady state: the first pass
opens the GL context and compiles each power-of-two voxel bucket, a one-off per process). The full ViT-L/14-reg feature cost is
estimated from one measured ViT-L forward (random weights, same FLOPs) times the number of view
batches, because running 150 ViT-L forwards per asset on a small CPU takes minutes; the estimate is
labelled as such. Last line: `data_pipeline: assets_per_min=<a>` (tiny encoder).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--assets", type=int, default=3)
    p.add_argument("--views", type=int, default=150)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--cond-views", type=int, default=24)
    p.add_argument("--cond-resolution", type=int, default=1024)
    p.add_argument("--batch-views", type=int, default=8)
    p.add_argument("--no-vitl", action="store_true", help="skip the ViT-L forward measurement")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from trellis_jax.data import shards
    from data_pipeline import builtin, config
    from data_pipeline.process import AssetProcessor

    cfg = config.get_config()
    cfg.num_views, cfg.resolution = args.views, args.resolution
    cfg.num_cond_views, cfg.cond_resolution = args.cond_views, args.cond_resolution
    cfg.encoder, cfg.batch_views = "tiny", args.batch_views

    tmp = tempfile.mkdtemp(prefix="dp_bench_")
    entries = builtin.write_procedural(os.path.join(tmp, "meshes"), 4)
    entries = [entries[2], entries[3]] + builtin.pybullet_entries(2) + entries[:2]
    entries = entries[: args.assets]
    proc = AssetProcessor(cfg)
    for e in entries:  # warm-up pass: opens the GL context, compiles each voxel-bucket shape once
        proc.process(e)
    proc.timings.clear()
    writer = shards.ShardWriter(os.path.join(tmp, "ds"), "data", shard_size=64)
    t0 = time.perf_counter()
    for e in entries:
        rec = proc.process(e)
        t = time.perf_counter()
        writer.add(e["id"], rec)
        proc.timings["write"] += time.perf_counter() - t
    writer.close()
    total = time.perf_counter() - t0
    n = len(entries)
    print(f"assets: {[e['id'] for e in entries]}")
    print(f"settings: {args.views} views at {args.resolution}^2, {args.cond_views} condition views at "
          f"{args.cond_resolution}^2, 64^3 voxels, tiny DINOv2 stand-in (1 layer, width 64)")
    for stage, sec in proc.timings.items():
        print(f"  {stage:14s} {sec / n:8.3f} s/asset")
    per_asset = total / n
    print(f"  {'total':14s} {per_asset:8.3f} s/asset")

    if not args.no_vitl:
        from data_pipeline.features import make_image_encoder

        enc = make_image_encoder("dinov2_vitl14_reg")  # random weights: same cost as pretrained
        x = jnp.zeros((args.batch_views, 518, 518, 3), jnp.float32)
        f = jax.jit(enc.fn)
        jax.block_until_ready(f(enc.params, x))
        t = time.perf_counter()
        jax.block_until_ready(f(enc.params, x))
        fwd = time.perf_counter() - t
        batches = -(-args.views // args.batch_views)
        vitl = fwd * batches
        tiny_feat = proc.timings.get("features", 0.0) / n
        est = per_asset - tiny_feat + vitl
        print(f"ViT-L/14-reg: one forward of {args.batch_views} views at 518^2 = {fwd:.2f} s (measured) -> "
              f"{vitl:.1f} s/asset for {args.views} views (estimated, {batches} batches)")
        print(f"data_pipeline_vitl: assets_per_min={60.0 / est:.3f} (estimated from the measured forward)")
    print(f"data_pipeline: assets_per_min={60.0 / per_asset:.3f}")
    proc.close()


if __name__ == "__main__":
    main()
