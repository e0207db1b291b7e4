"""Generate 3D assets from images or text with a TRELLIS pipeline directory (`trellis-jax generate`).

    python -m trellis_jax.sample --weights DIR --image a.png [b.png ...] [--seed 1] [--out outputs]
    python -m trellis_jax.sample --weights DIR --text "a red chair" [--num-samples 4]
    python -m trellis_jax.sample --weights DIR --image v1.png v2.png v3.png --multi-image stochastic

DIR is an official checkpoint directory (pipeline.json + ckpts/) such as TRELLIS-image-large, or one
written by `trellis-jax demo`. Image pipelines need DINOv2 weights (`--image-encoder HF_DIR`); text
pipelines CLIP (`--text-encoder HF_DIR`); without them a frozen random encoder is used and the output
says so. All samples of a call run in ONE jitted function. Per asset the output folder holds
gaussians.ply (3DGS), voxels.ply, voxels.glb, preview.png, mesh.glb (textured from the Gaussians when
the pipeline has a mesh decoder), turntable.mp4 and latents.npz; it is assembled as
`<name>.partial-*` and renamed when complete, and an existing one is never overwritten. Inputs and
the output directory are checked before any model is loaded; a bad one is one error line naming it.
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

from trellis_jax.atomic import check_output_dir, check_writable_dir
from trellis_jax.conditioning import encode_conditions
from trellis_jax.export.asset import AssetOptions, add_asset_arguments, asset_options, export_sample, host_meshes
from trellis_jax.sampling.pipeline import DECODER_ROLES, TrellisPipeline


def load_generator(weights: str | Path, *, capacity: int = 32768, image_encoder=None, text_encoder=None,
                   search_roots=(), **sampler_overrides):
    """-> (TrellisPipeline, conditioner, kind) for a pipeline directory; every setting checked
    (steps >= 1, a decoder for each requested format), errors naming pipeline.json or the option."""
    from trellis_jax.checkpoints import load_pipeline
    from trellis_jax.conditioning import conditioner_from_pipeline, load_image_conditioner, load_text_conditioner

    if capacity < 1:
        raise ValueError(f"--capacity must be >= 1, got {capacity}")
    for key, v in sampler_overrides.items():
        if key.endswith("_steps") and v is not None and v < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {v}")
    weights = Path(weights)
    loaded = load_pipeline(weights, search_roots=search_roots)
    # the formats the per-asset files need: Gaussians, and the radiance field / mesh when the pipeline has their decoders
    formats = ("gaussian",) + tuple(f for f in ("radiance_field", "mesh") if DECODER_ROLES[f] in loaded["models"])
    try:
        pipe = TrellisPipeline.from_checkpoint(loaded, capacity=capacity, formats=formats, **sampler_overrides)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{weights / 'pipeline.json'}: bad sampler settings ({e.args[0] if isinstance(e, KeyError) else e})") from e
    for stage, sampler in (("sparse_structure_sampler", pipe.ss_sampler), ("slat_sampler", pipe.slat_sampler)):
        if int(sampler.steps) < 1:
            raise ValueError(f"{weights / 'pipeline.json'}: {stage} steps must be >= 1, got {sampler.steps}")
    missing = [f"{fmt} (needs a '{DECODER_ROLES[fmt]}' model)" for fmt in pipe.formats if DECODER_ROLES[fmt] not in pipe.models]
    if missing:
        raise ValueError(f"{weights / 'pipeline.json'}: no decoder for the requested format(s) {', '.join(missing)}")
    raw = loaded["raw"]
    args = raw.get("args", raw)
    cond = conditioner_from_pipeline(weights, raw)
    kind = "text" if "text_cond_model" in args or (args.get("cond_encoder", {}).get("kind") == "text") else "image"
    if image_encoder or text_encoder or cond is None:
        cond = load_text_conditioner(text_encoder) if kind == "text" else load_image_conditioner(image_encoder)
    return pipe, cond, kind


def read_image(path: str | Path) -> Image.Image:
    """A fully decoded image (truncated or non-image files fail here, naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'is a directory, not an image' if path.is_dir() else 'file not found'}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, corrupt
        raise ValueError(f"{path}: not a readable image ({e})") from e


def sample_dir(out_dir, index: int, seed: int) -> Path:
    return Path(out_dir) / f"sample_{index:02d}_seed{seed}"


def resolve_seeds(seeds, n: int) -> list[int]:
    """One seed: seed, seed+1, ... for n samples; several: exactly one per sample."""
    seeds = [int(s) for s in seeds]
    if len(seeds) == 1:
        return [seeds[0] + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds given for {n} sample(s): give one seed, or one per sample")
    return seeds


def check_texts(texts, cond_model, log=print) -> None:
    """Empty prompts are an error (they would run unconditioned); prompts past CLIP's context are announced."""
    for t in texts:
        if not t.strip():
            raise ValueError("empty text prompt (it would generate unconditioned); give a description")
    from trellis_jax.encoders.clip_tokenizer import CONTEXT_LENGTH

    count = getattr(getattr(cond_model, "tokenizer", None), "count", None)
    if count is not None:
        for t in dict.fromkeys(texts):
            n = count(t)
            if n > CONTEXT_LENGTH:
                log(f"WARNING: prompt {t[:40]!r}... has {n} tokens; CLIP reads the first {CONTEXT_LENGTH}, the rest is ignored")


def generate(pipe: TrellisPipeline, cond_model, kind: str, *, images=(), texts=(), seeds=(0,), multi_image=None, out_dir="outputs",
             resolution: int = 64, assets: AssetOptions = AssetOptions(), log=print) -> list[dict]:
    """Sample and export; returns per exported sample {'index', 'prompt', 'seed', 'dir', files...}.
    images: paths (or PIL images); a sample that is not exported (empty, over capacity) is logged by prompt."""
    t0 = time.time()
    if not cond_model.pretrained:
        log(f"WARNING: condition encoder is a {cond_model.description} -- results are not those of the released model")
    if kind == "image":
        if not images:
            raise ValueError("this is an image-conditioned pipeline: give --image")
        pil = [im if isinstance(im, Image.Image) else read_image(im) for im in images]
        prompts = [str(im) for im in images]
        log(f"encoding {len(pil)} image(s) ...")
        cond, neg = encode_conditions(cond_model, pil, multi_image=bool(multi_image))
        if multi_image:
            prompts = [" + ".join(prompts)]  # all images condition one asset
    else:
        if not texts:
            raise ValueError("this is a text-conditioned pipeline: give --text")
        check_texts(texts, cond_model, log)
        prompts = list(texts)
        log(f"encoding {len(texts)} prompt(s) ...")
        cond, neg = encode_conditions(cond_model, texts)
    n = cond.shape[0]
    seeds = resolve_seeds(seeds, n)
    for b in range(n):
        check_output_dir(sample_dir(out_dir, b, seeds[b]))
    if multi_image:
        pipe = pipe.with_samplers(dataclasses.replace(pipe.ss_sampler, multi_image_mode=multi_image),
                                  dataclasses.replace(pipe.slat_sampler, multi_image_mode=multi_image))
    log(f"sampling {n} asset(s): structure ({pipe.ss_sampler.steps} steps) then latents ({pipe.slat_sampler.steps} steps), "
        f"capacity {pipe.capacity}, in one jitted call (the first call compiles) ...")
    out = pipe.sample(cond, neg, np.asarray(seeds), multi_image=bool(multi_image), on_error="flag")
    counts = np.asarray(out["num_voxels"])  # waits for the device
    t_sample = time.time() - t0
    log(f"sampled in {t_sample:.1f}s; exporting ...")
    meshes = host_meshes(out) if "mesh" in out else None
    results = []
    for b in range(n):
        d = sample_dir(out_dir, b, seeds[b])
        finite = bool(np.isfinite(np.asarray(out["latents"][b])[np.asarray(out["mask"][b])]).all())
        if not out["ok"][b] or not finite:
            nv = int(counts[b])
            reason = ("NaN/Inf latents" if not finite and out["ok"][b] else "empty structure" if nv == 0
                      else f"{nv} voxels exceed the capacity {pipe.capacity}; raise --capacity")
            log(f"sample {b} ({prompts[b]}): NOT exported ({reason})")
            continue
        files = export_sample(out, b, d, resolution, mesh=None if meshes is None else meshes[b], options=assets, log=log)
        results.append({"index": b, "prompt": prompts[b], "seed": seeds[b], "dir": d, "num_voxels": int(counts[b]), **files})
        log(f"sample {b} ({prompts[b]}): {int(counts[b])} voxels -> {d}")
    log(f"generated {len(results)} of {n} asset(s) in {time.time() - t0:.1f}s")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-jax generate", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="pipeline directory (pipeline.json + ckpts/)")
    ap.add_argument("--image", nargs="*", default=[], help="condition image(s); RGBA: cropped around the alpha, RGB: used whole")
    ap.add_argument("--text", nargs="*", default=[], help="text prompt(s)")
    ap.add_argument("--multi-image", choices=["stochastic", "multidiffusion"], help="all --image views condition ONE asset")
    ap.add_argument("--seed", type=int, nargs="*", default=[0], help="one seed (then seed, seed+1, ...) or one per sample")
    ap.add_argument("--num-samples", type=int, default=1, help="samples per prompt (seeds seed..seed+n-1)")
    ap.add_argument("--out", default="outputs")
    ap.add_argument("--capacity", type=int, default=32768, help="static voxel capacity per asset")
    ap.add_argument("--image-encoder", help="HF-format DINOv2-with-registers directory")
    ap.add_argument("--text-encoder", help="HF-format CLIP text directory")
    ap.add_argument("--ckpt-root", nargs="*", default=[], help="where cross-repo checkpoints live")
    for stage in ("ss", "slat"):
        ap.add_argument(f"--{stage}-steps", type=int)
        ap.add_argument(f"--{stage}-cfg-strength", type=float)
    add_asset_arguments(ap)
    args = ap.parse_args(argv)
    overrides = {"ss_steps": args.ss_steps, "ss_cfg_strength": args.ss_cfg_strength,
                 "slat_steps": args.slat_steps, "slat_cfg_strength": args.slat_cfg_strength}
    try:
        # everything the user gave is checked before a model is loaded
        assets = asset_options(args)
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        if args.image and args.text:
            raise ValueError("give --image or --text, not both")
        for p in args.image:
            read_image(p)
        names = [p for p in args.image for _ in range(1 if args.multi_image else args.num_samples)]
        texts = [t for t in args.text for _ in range(args.num_samples)]
        for t in texts:
            if not t.strip():
                raise ValueError("empty text prompt (it would generate unconditioned); give a description")
        n = 1 if (args.multi_image and names) else len(names) or len(texts)
        seeds = resolve_seeds(args.seed, max(n, 1))
        for b in range(n):
            check_output_dir(sample_dir(args.out, b, seeds[b]))
        check_writable_dir(args.out)
        print(f"loading {args.weights} ...", file=sys.stderr, flush=True)
        pipe, cond_model, kind = load_generator(args.weights, capacity=args.capacity, image_encoder=args.image_encoder,
                                                text_encoder=args.text_encoder, search_roots=args.ckpt_root, **overrides)
        log = lambda msg: print(msg, file=sys.stderr, flush=True)
        results = generate(pipe, cond_model, kind, images=names, texts=texts,
                           seeds=seeds, multi_image=args.multi_image, out_dir=args.out, assets=assets, log=log)
    except (OSError, ValueError, KeyError) as e:
        print(f"trellis-jax generate: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(json.dumps([{k: str(v) for k, v in r.items()} for r in results], indent=1))
    return 0 if len(results) == n else 1


if __name__ == "__main__":
    sys.exit(main())
