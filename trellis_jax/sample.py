"""Generate 3D assets from images or text with a TRELLIS pipeline directory (`trellis-jax generate`).

    python -m trellis_jax.sample --weights DIR --image a.png [b.png ...] [--seed 1] [--out outputs]
    python -m trellis_jax.sample --weights DIR --text "a red chair" [--num-samples 4]
    python -m trellis_jax.sample --weights DIR --image v1.png v2.png v3.png --multi-image stochastic

DIR is an official checkpoint directory (pipeline.json + ckpts/) such as TRELLIS-image-large, or one
written by `trellis-jax demo`. Image pipelines need DINOv2 weights (`--image-encoder HF_DIR`); text
pipelines CLIP (`--text-encoder HF_DIR`); without them a frozen random encoder is used and the output
says so. All samples of a call run in ONE jitted function. Per asset the output folder holds
gaussians.ply (3DGS), voxels.ply, voxels.glb, preview.png and latents.npz.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trellis_jax.sampling.pipeline import TrellisPipeline


def load_generator(weights: str | Path, *, capacity: int = 32768, image_encoder=None, text_encoder=None,
                   search_roots=(), **sampler_overrides):
    """-> (TrellisPipeline, conditioner, kind) for a pipeline directory."""
    from trellis_jax.checkpoints import load_pipeline
    from trellis_jax.conditioning import conditioner_from_pipeline, load_image_conditioner, load_text_conditioner

    weights = Path(weights)
    loaded = load_pipeline(weights, search_roots=search_roots)
    pipe = TrellisPipeline.from_checkpoint(loaded, capacity=capacity, **sampler_overrides)
    raw = loaded["raw"]
    args = raw.get("args", raw)
    cond = conditioner_from_pipeline(weights, raw)
    kind = "text" if "text_cond_model" in args or (args.get("cond_encoder", {}).get("kind") == "text") else "image"
    if image_encoder or text_encoder or cond is None:
        cond = load_text_conditioner(text_encoder) if kind == "text" else load_image_conditioner(image_encoder)
    return pipe, cond, kind


def export_sample(out: dict, b: int, directory: Path, resolution: int = 64) -> dict[str, Path]:
    """Write one sample's files; returns their paths."""
    from trellis_jax.export.gaussian_ply import save_gaussian_ply
    from trellis_jax.export.voxels import save_voxel_glb, save_voxel_ply
    from trellis_jax.render.preview import save_preview

    directory.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(out["mask"][b])
    coords = np.asarray(out["coords"][b])[mask]
    files = {"voxels_ply": save_voxel_ply(directory / "voxels.ply", coords, resolution)}
    g = out["gaussian"].sample(b) if "gaussian" in out else None
    colors = None
    if g is not None:
        files["gaussians_ply"] = save_gaussian_ply(directory / "gaussians.ply", g["xyz"], g["features_dc"], g["opacity"], g["scaling"], g["rotation"])
        save_preview(directory / "preview.png", g)
        files["preview_png"] = directory / "preview.png"
        G = len(g["xyz"]) // max(len(coords), 1)
        colors = np.clip(0.2820948 * g["features_dc"].reshape(len(coords), G, 3).mean(1) + 0.5, 0, 1)
    files["voxels_glb"] = save_voxel_glb(directory / "voxels.glb", coords, resolution, colors)
    extra = {"ss_latent": np.asarray(out["ss_latent"][b])} if "ss_latent" in out else {}
    np.savez(directory / "latents.npz", coords=coords.astype(np.uint8 if resolution <= 256 else np.int32),
             feats=np.asarray(out["latents"][b])[mask], **extra)
    files["latents_npz"] = directory / "latents.npz"
    return files


def generate(pipe: TrellisPipeline, cond_model, kind: str, *, images=(), texts=(), seeds=(0,), multi_image=None, out_dir="outputs",
             resolution: int = 64, log=print) -> list[dict]:
    """Sample and export; returns per-sample {'dir', files...}."""
    t0 = time.time()
    if not cond_model.pretrained:
        log(f"WARNING: condition encoder is a {cond_model.description} -- results are not those of the released model")
    if kind == "image":
        if not images:
            raise ValueError("this is an image-conditioned pipeline: give --image")
        pil = [Image.open(p) for p in images]
        cond = cond_model(pil)
        if multi_image:
            cond = cond[None]  # [1, K, T, C]: all images condition one asset
        neg = cond_model.negative(1 if multi_image else cond.shape[0])
    else:
        if not texts:
            raise ValueError("this is a text-conditioned pipeline: give --text")
        cond = cond_model(texts)
        neg = cond_model.negative(cond.shape[0])
    n = cond.shape[0]
    seeds = list(seeds) if len(seeds) == n else [int(seeds[0]) + i for i in range(n)]
    if multi_image:
        pipe = pipe.with_samplers(dataclasses.replace(pipe.ss_sampler, multi_image_mode=multi_image),
                                  dataclasses.replace(pipe.slat_sampler, multi_image_mode=multi_image))
    out = pipe.sample(cond, neg, np.asarray(seeds), multi_image=bool(multi_image), on_error="flag")
    t_sample = time.time() - t0
    results = []
    for b in range(n):
        d = Path(out_dir) / f"sample_{b:02d}_seed{seeds[b]}"
        if not out["ok"][b]:
            nv = int(out["num_voxels"][b])
            reason = "empty structure" if nv == 0 else f"{nv} voxels exceed the capacity {pipe.capacity}"
            log(f"sample {b}: NOT exported ({reason})")
            continue
        files = export_sample(out, b, d, resolution)
        results.append({"dir": d, "num_voxels": int(out["num_voxels"][b]), **files})
        log(f"sample {b}: {int(out['num_voxels'][b])} voxels -> {d}")
    log(f"generated {n} asset(s) in {t_sample:.1f}s (one jitted call incl. compile)")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-jax generate", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="pipeline directory (pipeline.json + ckpts/)")
    ap.add_argument("--image", nargs="*", default=[], help="condition image(s) (RGBA with alpha preferred)")
    ap.add_argument("--text", nargs="*", default=[], help="text prompt(s)")
    ap.add_argument("--multi-image", choices=["stochastic", "multidiffusion"], help="all --image views condition ONE asset")
    ap.add_argument("--seed", type=int, nargs="*", default=[0])
    ap.add_argument("--num-samples", type=int, default=1, help="samples per prompt (seeds seed..seed+n-1)")
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--capacity", type=int, default=32768, help="static voxel capacity per asset")
    ap.add_argument("--image-encoder", help="HF-format DINOv2-with-registers directory")
    ap.add_argument("--text-encoder", help="HF-format CLIP text directory")
    ap.add_argument("--ckpt-root", nargs="*", default=[], help="where cross-repo checkpoints live")
    for stage in ("ss", "slat"):
        ap.add_argument(f"--{stage}-steps", type=int)
        ap.add_argument(f"--{stage}-cfg-strength", type=float)
    args = ap.parse_args(argv)
    overrides = {"ss_steps": args.ss_steps, "ss_cfg_strength": args.ss_cfg_strength,
                 "slat_steps": args.slat_steps, "slat_cfg_strength": args.slat_cfg_strength}
    try:
        pipe, cond_model, kind = load_generator(args.weights, capacity=args.capacity, image_encoder=args.image_encoder,
                                                text_encoder=args.text_encoder, search_roots=args.ckpt_root, **overrides)
        images = [p for p in args.image for _ in range(1 if args.multi_image else args.num_samples)]
        texts = [t for t in args.text for _ in range(args.num_samples)]
        seeds = args.seed if len(args.seed) > 1 else [args.seed[0]]
        results = generate(pipe, cond_model, kind, images=images, texts=texts, seeds=seeds, multi_image=args.multi_image, out_dir=args.out)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"trellis-jax generate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps([{k: str(v) for k, v in r.items()} for r in results], indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
