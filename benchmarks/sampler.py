"""Per-asset sampling time of the composed jitted sampler at batch 1, 4, 8 (tiny config, CPU).

    python benchmarks/sampler.py [--steps 12] [--capacity 4096] [--repeats 3]

Uses a tiny random-weight pipeline (the `write_random_pipeline` config: 8³×8 SS latent, 32³ voxels,
width-64 two-block flows) with the pipeline.json sampler settings (CFG 3, interval [0.5, 1],
rescale_t 3). Compile time is reported separately; sampling time is the median of `repeats` calls.
`stage-2 rows` is the row count G_L and the decoder ran at (the smallest capacity/2^k holding the
batch's largest voxel count, see `TrellisPipeline.stage2_sizes`).
Last line: `sampler: per_asset_b8_over_b1=<r>` (target r <= 0.5).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
from timing import time_calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from trellis_jax.sample import load_generator
    from trellis_jax.sampling.random_pipeline import write_random_pipeline

    weights = write_random_pipeline(Path(tempfile.mkdtemp()) / "tiny", steps=args.steps)
    per_asset = {}
    print(f"{'batch':>5} {'compile s':>10} {'call s':>8} {'per asset s':>12} {'stage-2 rows':>13}  voxels/asset")
    for batch in (1, 4, 8):
        pipe, cond_model, _ = load_generator(weights, capacity=args.capacity)  # fresh jit cache per batch size
        rng = np.random.default_rng(0)
        images = rng.uniform(size=(batch, cond_model.image_size, cond_model.image_size, 3)).astype(np.float32)
        cond = cond_model.encode_arrays(images)
        neg = cond_model.negative(batch)
        timing = time_calls(lambda i: pipe.sample(cond, neg, np.arange(batch) + 1000 * i, on_error="flag"), args.repeats)
        first, call, out = timing.first_s, timing.median_s, timing.result
        per_asset[batch] = call / batch
        print(f"{batch:>5} {max(first - call, 0):>10.1f} {call:>8.2f} {call / batch:>12.3f} {int(out['stage2_rows']):>13}  {np.asarray(out['num_voxels']).tolist()}")
    print(f"sampler: per_asset_b8_over_b1={per_asset[8] / per_asset[1]:.3f}")


if __name__ == "__main__":
    main()
