"""`trellis-jax edit`: edit an asset produced by `trellis-jax generate` (its latents.npz).

    trellis-jax edit variation --weights DIR --asset S/latents.npz (--image X.png | --text "...") --out OUT
        keep the voxel structure, resample the local latents (details/appearance) under a new condition
    trellis-jax edit region --weights DIR --asset S/latents.npz --box X0 Y0 Z0 X1 Y1 Z1 (--image|--text) --out OUT
        regenerate the voxels and latents inside the box [X0,X1)×[Y0,Y1)×[Z0,Z1) (voxel indices of the
        model's grid: 0..63 for the released models, 0..31 for the demo's 32³) with RePaint; everything
        outside is kept. A box outside the grid or empty, and an edited structure past --capacity, are errors.
OUT must not exist yet (or be empty); the asset is assembled as `OUT.partial-*` and renamed when complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from trellis_jax.sampling.editing import Editor, RePaintConfig


def _pad_asset(coords: np.ndarray, feats: np.ndarray, capacity: int):
    """[L, 3] / [L, C] -> padded device arrays [1, capacity, ...] and the mask."""
    c = np.zeros((1, capacity, 3), np.int32)
    f = np.zeros((1, capacity, feats.shape[1]), np.float32)
    c[0, : len(coords)], f[0, : len(coords)] = coords, feats
    return jnp.asarray(c), jnp.asarray(np.arange(capacity)[None] < len(coords)), jnp.asarray(f)


def check_box(box, resolution: int | None) -> None:
    """[X0, Y0, Z0, X1, Y1, Z1] must be a non-empty box inside the 0..resolution grid (resolution None:
    only what can be checked before the model is loaded)."""
    lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
    if (lo < 0).any() or (lo >= hi).any() or (resolution is not None and (hi > resolution).any()):
        grid = f" <= {resolution} (and likewise for Y, Z) on the model's {resolution}^3 grid" if resolution else " (and likewise for Y, Z)"
        raise ValueError(f"--box {' '.join(map(str, box))}: need 0 <= X0 < X1{grid}")


def main(argv=None) -> int:
    from trellis_jax.atomic import check_output_dir
    from trellis_jax.export.asset import (add_asset_arguments, asset_options, check_latents_fit, export_sample,
                                          host_meshes, read_latents)
    from trellis_jax.sample import check_texts, load_generator, read_image

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
    ap.add_argument("--out", default="outputs/edit", type=Path, help="new asset directory (must not exist yet)")
    add_asset_arguments(ap)
    args = ap.parse_args(argv)
    try:
        options = asset_options(args)
        # inputs and the output directory are checked before a model is loaded
        coords, feats, ss = read_latents(args.asset)
        if args.mode == "region" and (args.box is None or ss is None):
            raise ValueError("region editing needs --box and an asset saved with its ss_latent")
        if args.mode == "region":
            check_box(args.box, None)
        if len(coords) > args.capacity:
            raise ValueError(f"{args.asset}: {len(coords)} voxels exceed --capacity {args.capacity}")
        image = read_image(args.image) if args.image else None
        if args.text is not None:
            check_texts([args.text], None)
        check_output_dir(args.out)
        pipe, cond_model, kind = load_generator(args.weights, capacity=args.capacity)
        flow = pipe.module("slat_flow_model")
        res = flow.resolution
        check_latents_fit(args.asset, coords, feats, res, flow.out_channels)
        if args.mode == "region":
            check_box(args.box, res)
        if kind == "image":
            if image is None:
                raise ValueError("image pipeline: give --image")
            cond = cond_model([image])
        else:
            if not args.text:
                raise ValueError("text pipeline: give --text")
            check_texts([args.text], cond_model, lambda m: print(m, file=sys.stderr))
            cond = cond_model([args.text])
        neg = cond_model.negative(1)
        c, mask, f = _pad_asset(coords, feats, args.capacity)
        ed = Editor(pipe, RePaintConfig(args.jump_length, args.resamples))
        print(f"editing ({args.mode}) ...", file=sys.stderr, flush=True)
        if args.mode == "variation":
            out = ed.variation(c, mask, cond, neg, [args.seed], resolution=res)
            out["num_voxels"] = np.asarray(out["mask"]).sum(1)
        else:
            out = ed.edit_region(jnp.asarray(ss)[None], c, mask, f, args.box[:3], args.box[3:], cond, neg, [args.seed], resolution=res)
            n = int(np.asarray(out["num_voxels"])[0])  # the true occupied count, not the capacity-cut mask
            if n > args.capacity:
                raise ValueError(f"the edited structure has {n} occupied voxels, more than --capacity {args.capacity}; "
                                 f"raise --capacity (nothing written)")
            if n == 0:
                raise ValueError("the edited structure is empty (no occupied voxel); nothing written")
        meshes = host_meshes(out)
        log = lambda msg: print(msg, file=sys.stderr, flush=True)
        files = export_sample(out, 0, args.out, res, mesh=None if meshes is None else meshes[0], options=options, log=log)
    except (OSError, ValueError, KeyError) as e:
        print(f"trellis-jax edit: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
