"""Steps/s of the trainer on an image-conditioned tiny G_S run over a small grain latent dataset (CPU).

    python benchmarks/train_image_cond.py [--steps 30] [--config.batch_size=8 ...]

Writes 8 assets (8³×8 ss_latent, two 96² RGBA condition views each) to a temporary directory and
runs `trainer.run` on `experiments/train/ss_flow.py:tiny` with `cond.kind=image cond.arch=tiny`
(a frozen random tiny DINOv2, 70² input, 64 channels), checkpoints only at the end. The figure is
the median of the per-step `perf/steps_per_sec` the trainer logs, first two steps left out.
Last line: `train_image_cond: steps_per_sec=<x> ...`.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from trellis_jax.data import schema, shards
from trellis_jax.config_loader import apply_overrides, load_config, split_config_overrides
from trellis_jax.tools.tb_reader import read_scalars
from trellis_jax.training import trainer


def write_dataset(root: Path, assets: int = 8, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    with shards.ShardWriter(str(root), "data", shard_size=4) as w:
        for i in range(assets):
            n = int(g.integers(20, 60))
            flat = np.sort(g.choice(16**3, n, replace=False))
            coords = (np.stack(np.unravel_index(flat, (16,) * 3), -1) + 20).astype(np.uint8)
            views = np.zeros((2, 96, 96, 4), np.uint8)
            views[:, 20:76, 24:72, :3] = g.integers(0, 256, (2, 56, 48, 3))
            views[:, 20:76, 24:72, 3] = 255
            png, offsets = schema.pack_pngs(views, threads=1)
            arrays = {"coords": coords, "features": g.standard_normal((n, 4)).astype(np.float16),
                      "ss_latent": g.standard_normal((8, 8, 8, 8)).astype(np.float32),
                      "cond_png": png, "cond_png_offsets": offsets}
            meta = {"id": f"asset{i}", "captions": [], "resolution": 64, "num_voxels": n}
            w.add(meta["id"], schema.encode(meta, arrays))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args, rest = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data)
        cfg = apply_overrides(load_config("experiments/train/ss_flow.py:tiny"), [
            f"data.path={data}", "data.kind=grain", "data.worker_count=0", "cond.kind=image", "cond.arch=tiny",
            "model.args.cond_channels=64", "batch_size=4", f"total_steps={args.steps}", f"ckpt_every={args.steps}",
            "init_rng_impl=rbg"] + [o for o in split_config_overrides(rest, ap.error)])
        work = Path(tmp) / "work"
        out = trainer.run(cfg, work, log=lambda m: None)
        rates = [v for s, v in read_scalars(work / "tb")["perf/steps_per_sec"] if s >= 2]
        print(f"train_image_cond: steps_per_sec={float(np.median(rates)):.2f} steps={args.steps} "
              f"batch={cfg.batch_size} compile_s={out['compile_seconds']:.1f}")


if __name__ == "__main__":
    main()
