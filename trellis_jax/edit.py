"""`trellis-jax edit`: edit an asset produced by `trellis-jax generate` (its latents.npz).

    trellis-jax edit variation --weights DIR --asset S/latents.npz (--image X.png | --text "...") --out OUT
        keep the voxel structure, resample the local latents (details/appearance) under a new condition
    trellis-jax edit region --weights DIR --asset S/latents.npz --box X0 Y0 Z0 X1 Y1 Z1 (--image|--text) --out OUT
        regenerate the voxels and latents inside the box [X0,X1)×[Y0,Y1)×[Z0,Z1) (voxel indices) with
        RePaint; everything outside is kept
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

from trellis_jax.sampling.editing import Editor, RePaintConfig


def _load_asset(path: Path, capacity: int):
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path) as z:
        coords, feats = np.asarray(z["coords"], np.int32), np.asarray(z["feats"], np.float32)
        ss = np.asarray(z["ss_latent"], np.float32) if "ss_latent" in z.files else None
    if len(coords) == 0:
        raise ValueError(f"{path}: empty voxel set")
    if len(coords) > capacity:
        raise ValueError(f"{path}: {len(coords)} voxels exceed --capacity {capacity}")
    c = np.zeros((1, capacity, 3), np.int32)
    f = np.zeros((1, capacity, feats.shape[1]), np.float32)
    c[0, : len(coords)], f[0, : len(coords)] = coords, feats
    return jnp.asarray(c), jnp.asarray(np.arange(capacity)[None] < len(coords)), jnp.asarray(f), ss


def main(argv=None) -> int:
    from trellis_jax.sample import export_sample, load_generator

    ap = argparse.ArgumentParser(prog="trellis-jax edit", description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["variation", "region"])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--asset", required=True, type=Path, help="latents.npz written by generate")
    ap.add_argument("--image")
    ap.add_argument("--text")
    ap.add_argument("--box", type=int, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=32768)
    ap.add_argument("--jump-length", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=2)
    ap.add_argument("--out", default="outputs/edit", type=Path)
    args = ap.parse_args(argv)
    try:
        pipe, cond_model, kind = load_generator(args.weights, capacity=args.capacity)
        if kind == "image":
            if not args.image:
                raise ValueError("image pipeline: give --image")
            cond = cond_model([Image.open(args.image)])
        else:
            if not args.text:
                raise ValueError("text pipeline: give --text")
            cond = cond_model([args.text])
        neg = cond_model.negative(1)
        coords, mask, feats, ss = _load_asset(args.asset, args.capacity)
        res = pipe._module("slat_flow_model").resolution
        ed = Editor(pipe, RePaintConfig(args.jump_length, args.resamples))
        if args.mode == "variation":
            out = ed.variation(coords, mask, cond, neg, [args.seed], resolution=res)
        else:
            if args.box is None or ss is None:
                raise ValueError("region editing needs --box and an asset saved with its ss_latent")
            out = ed.edit_region(jnp.asarray(ss)[None], coords, mask, feats, args.box[:3], args.box[3:], cond, neg, [args.seed], resolution=res)
        out["num_voxels"] = np.asarray(out["mask"]).sum(1)
        files = export_sample(out, 0, args.out, res)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"trellis-jax edit: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
