"""`trellis-jax export`: decode saved latents (latents.npz: coords [L,3], feats [L,8]) with a pipeline's
decoders and write gaussians.ply, voxels.ply, voxels.glb, preview.png, mesh.glb (textured from the
Gaussians; only when the pipeline has a mesh decoder) and turntable.mp4.

    trellis-jax export --weights DIR --latents sample/latents.npz --out OUT

OUT must not exist yet (or be empty); it is assembled as `OUT.partial-*` and renamed when complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    from trellis_jax.atomic import check_output_dir
    from trellis_jax.checkpoints import load_pipeline
    from trellis_jax.export.asset import (add_asset_arguments, asset_options, check_latents_fit, export_sample,
                                          host_meshes, read_latents)
    from trellis_jax.sampling.pipeline import TrellisPipeline

    ap = argparse.ArgumentParser(prog="trellis-jax export", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--latents", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--resolution", type=int, default=None, help="voxel grid (default: the decoder's)")
    add_asset_arguments(ap)
    args = ap.parse_args(argv)
    try:
        options = asset_options(args)
        coords, feats, _ = read_latents(args.latents)
        check_output_dir(args.out)
        loaded = load_pipeline(args.weights)
        if "slat_decoder_gs" not in loaded["models"]:
            raise ValueError(f"{Path(args.weights) / 'pipeline.json'}: no 'slat_decoder_gs' model to decode Gaussians with")
        formats = ("gaussian",) + (("mesh",) if "slat_decoder_mesh" in loaded["models"] else ())
        pipe = TrellisPipeline.from_checkpoint(loaded, formats=formats)
        dec = pipe.module("slat_decoder_gs")
        res = args.resolution or dec.resolution
        check_latents_fit(args.latents, coords, feats, res, dec.latent_channels)
        cap = 1 << int(np.ceil(np.log2(len(coords))))
        c = np.zeros((1, cap, 3), np.int32)
        f = np.zeros((1, cap, feats.shape[1]), np.float32)
        c[0, : len(coords)], f[0, : len(coords)] = coords, feats
        mask = np.arange(cap)[None] < len(coords)
        out = {"coords": jnp.asarray(c), "mask": jnp.asarray(mask), "latents": jnp.asarray(f)}
        out.update(pipe.decode(pipe.params(), out["coords"], out["mask"], out["latents"], res))
        meshes = host_meshes(out)
        log = lambda msg: print(msg, file=sys.stderr, flush=True)
        files = export_sample(out, 0, args.out, res, mesh=None if meshes is None else meshes[0], options=options, log=log)
    except (OSError, ValueError, KeyError) as e:
        print(f"trellis-jax export: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
