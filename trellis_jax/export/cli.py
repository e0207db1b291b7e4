"""`trellis-jax export`: decode saved latents (latents.npz: coords [L,3], feats [L,8]) with a pipeline's
Gaussian decoder and write gaussians.ply, voxels.ply, voxels.glb and preview.png.

    trellis-jax export --weights DIR --latents sample/latents.npz --out OUT
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    from trellis_jax.checkpoints import load_pipeline
    from trellis_jax.sample import export_sample
    from trellis_jax.sampling.pipeline import TrellisPipeline

    ap = argparse.ArgumentParser(prog="trellis-jax export", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--latents", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--resolution", type=int, default=None, help="voxel grid (default: the decoder's)")
    args = ap.parse_args(argv)
    if not args.latents.exists():
        print(f"trellis-jax export: error: {args.latents} not found", file=sys.stderr)
        return 2
    with np.load(args.latents) as z:
        coords, feats = np.asarray(z["coords"], np.int32), np.asarray(z["feats"], np.float32)
    if len(coords) == 0:
        print(f"trellis-jax export: error: {args.latents} holds an empty voxel set", file=sys.stderr)
        return 2
    loaded = load_pipeline(args.weights)
    pipe = TrellisPipeline.from_checkpoint(loaded)
    res = args.resolution or pipe._module("slat_decoder_gs").resolution
    cap = 1 << int(np.ceil(np.log2(len(coords))))
    c = np.zeros((1, cap, 3), np.int32)
    f = np.zeros((1, cap, feats.shape[1]), np.float32)
    c[0, : len(coords)], f[0, : len(coords)] = coords, feats
    mask = np.arange(cap)[None] < len(coords)
    out = {"coords": jnp.asarray(c), "mask": jnp.asarray(mask), "latents": jnp.asarray(f)}
    out.update(pipe.decode(pipe.params(), out["coords"], out["mask"], out["latents"], res))
    files = export_sample(out, 0, args.out, res)
    print("\n".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
