"""The embedded end-to-end default: built-in data -> tiny TRELLIS models -> 3D assets, on a CPU.

    trellis-jax demo [--config experiments/demo.py:default] [--out DIR]
    python -m trellis_jax.demo

1. writes the built-in dataset (procedural textured meshes with captions) and builds it, as a user's
   script would, through the CLI (`builtin-data`, `build-data`): renders, 32³ voxels, voxel features
   from a frozen tiny DINOv2, ArrayRecord shards (held-out assets kept apart);
2. trains the SS VAE and the SLat VAE (encoder + Gaussian decoder, by differentiable splatting against
   the renders) with the trainer (`trellis_jax.training.trainer.run`, the `trellis-jax train` loop),
   reporting the SLat VAE's reconstruction PSNR on the held-out assets before and after training;
   encodes the dataset's SS and SLat latents with the trained encoders (`encode-data`) and measures
   the SLat normalisation statistics; trains the mesh decoder (FlexiCubes, by rasterising mask / depth /
   normal / colour against the stored views) on the latents of the trained SLat encoder, frozen;
3. trains G_S and G_L for image and for text conditions with the trainer (rectified flow, CFG dropout);
4. saves each pipeline as an official-format checkpoint directory (`save_pipeline`), reloads it
   through the official loader, and samples the held-out images / captions in one jitted call each;
5. writes per asset: gaussians.ply (3DGS), mesh.glb (textured from the Gaussians), voxels.ply, voxels.glb,
   preview.png, turntable.mp4 (Gaussians | mesh colour | mesh normals); prints where;
6. evaluates the held-out assets with `trellis-jax eval` (reconstruction of the SLat VAE and mesh decoder it
   trained, generation of each pipeline) and prints the tables (`cfg.evaluate`; off in the smoke variant).
Each training stage's workdir (checkpoints, metrics.jsonl, TensorBoard) is OUT/train/<stage>; a rerun
resumes every stage from its last checkpoint. The condition encoders have RANDOM frozen weights
(pretrained DINOv2/CLIP cannot be downloaded here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pair_outputs(results: list[dict], prompts: list[str]) -> tuple[list[dict], list[str]]:
    """generate()'s results (each with its sample 'index') -> ([{prompt, dir, files...}] of the exported
    samples, prompts whose sample was not exported). Pairs by index, never by position in `results`."""
    rows = [{"prompt": prompts[r["index"]], **{k: str(v) for k, v in r.items() if k != "prompt"}} for r in results]
    done = {r["index"] for r in results}
    return rows, [p for i, p in enumerate(prompts) if i not in done]


def command(*argv) -> None:
    """Run a `trellis-jax` subcommand in-process (exactly as a shell script would call it)."""
    from trellis_jax import cli

    argv = [str(a) for a in argv]
    log("$ trellis-jax " + " ".join(argv))
    rc = cli.main(argv)
    if rc != 0:
        raise RuntimeError(f"`trellis-jax {' '.join(argv)}` failed (exit code {rc}); see the lines above")


def stage_config(cfg, stage: str, data_path, *, batch_size: int, steps: int, extra=()):
    """The trainer config of a demo stage: experiments/train/<task>.py:tiny + the demo's common overrides
    (raw weights exported, not the EMA of a few hundred steps; 'rbg' init, far faster to compile on CPU),
    then the stage's own (cfg.stages[stage].overrides), then `extra`."""
    from trellis_jax.config_loader import load_config

    s = cfg.stages[stage]
    common = [f"seed={cfg.seed}", f"optimizer.lr={cfg.lr}", f"batch_size={batch_size}", f"total_steps={steps}",
              f"ckpt_every={max(steps, 1)}", f"log_every={max(1, min(10, steps))}", "export_params=params", "init_rng_impl=rbg",
              "data.kind=grain", f"data.path={data_path}", "data.worker_count=0"]
    return load_config(s.config, [*common, *s.overrides, *extra])


def train(cfg, stage: str, workdir: Path, tc) -> tuple[dict, Path]:
    """One stage through the trainer -> (summary, the exported models' ckpts directory)."""
    from trellis_jax.training.trainer import run

    t0 = time.time()
    res = run(tc, workdir, log=log)
    losses = res["losses"]
    summary = {"seconds": time.time() - t0, "steps": int(tc.total_steps), "workdir": str(workdir)}
    if losses:
        k = max(1, len(losses) // 10)
        vals = [losses[s] for s in sorted(losses)]
        summary.update(first_loss=float(np.mean(vals[:k])), last_loss=float(np.mean(vals[-k:])))
        log(f"{stage}: {len(vals)} steps in {summary['seconds']:.0f}s, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
    return summary, workdir / "ckpts"


def largest_asset(directory) -> int:
    """Most voxels of any asset in a built (or encoded) dataset."""
    from trellis_jax.data import shards

    return max(len(arrays["coords"]) for _, arrays in shards.read_dataset(str(directory), fields=("coords",)))


def bucket(n: int, buckets) -> int:
    fits = [b for b in sorted(buckets) if b >= n]
    if not fits:
        raise ValueError(f"an asset has {n} voxels, more than the largest capacity bucket {max(buckets)} (config capacity_buckets)")
    return fits[0]


def heldout_psnr(task, params, directory) -> float:
    """Mean PSNR (dB) of the SLat VAE's reconstructions (posterior mean, white background) of every
    stored view of every held-out asset, at the task's render size."""
    from PIL import Image

    from trellis_jax.data import shards
    from trellis_jax.data.schema import unpack_png

    fields = ("coords", "features", "views_png", "views_png_offsets", "views_extrinsics", "views_intrinsics")
    psnrs, S, L = [], task.render_size, task.capacity
    for meta, a in shards.read_dataset(str(directory), fields=fields):
        n = len(a["coords"])
        coords = np.zeros((1, L, 3), np.int32)
        feats = np.zeros((1, L, a["features"].shape[-1]), np.float32)
        coords[0, :n], feats[0, :n] = a["coords"], a["features"]
        mask = (np.arange(L) < n)[None]
        views = [unpack_png(a["views_png"], a["views_png_offsets"], v) for v in range(len(a["views_png_offsets"]) - 1)]
        rgba = np.stack([np.asarray(Image.fromarray(x).resize((S, S), Image.Resampling.LANCZOS)) for x in views]) / 255.0
        target = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        pred = np.asarray(task.reconstruct(params, coords, feats, mask, np.asarray(a["views_extrinsics"], np.float32),
                                           np.asarray(a["views_intrinsics"], np.float32)))
        mse = np.mean(np.square(pred - target), axis=(1, 2, 3))
        psnrs += list(-10 * np.log10(np.maximum(mse, 1e-12)))
    return float(np.mean(psnrs))


def slat_statistics(latents_dir) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std of the encoded SLat latents (the reference's stat_latent rule: mean of the
    per-asset means, std from the mean of per-asset second moments)."""
    from trellis_jax.data import shards

    means, sq = [], []
    for _, a in shards.read_dataset(str(latents_dir), fields=("slat",)):
        means.append(a["slat"].mean(0))
        sq.append(np.square(a["slat"]).mean(0))
    mean = np.mean(means, 0)
    return mean, np.sqrt(np.maximum(np.mean(sq, 0) - mean**2, 1e-8))


def load_exported(ckpts: Path, model_cfg) -> tuple:
    """(checkpoint name, class_name, args, params) of a model the trainer exported to `ckpts`."""
    from trellis_jax.checkpoints import load_model

    _, params = load_model(ckpts / model_cfg.checkpoint)
    return (model_cfg.checkpoint, model_cfg.class_name, model_cfg.args.to_dict(), params)


# ----------------------------------------------------------------------------- the job
def run(cfg) -> dict:
    from trellis_jax.atomic import atomic_write_text, check_output_dir
    from trellis_jax.checkpoints import save_pipeline
    from trellis_jax.conditioning import load_image_conditioner, load_text_conditioner
    from trellis_jax.data import shards
    from trellis_jax.data.schema import unpack_png
    from trellis_jax.sample import generate, load_generator
    from trellis_jax.training.trainer import build_task, initial_params

    t_start = time.time()
    out = Path(cfg.out)
    for kind in cfg.conditions:  # a finished run's samples are never overwritten (checked before training)
        check_output_dir(out / "samples" / kind)
    R, B, steps = cfg.voxel_resolution, cfg.batch_size, cfg.steps
    summary: dict = {"config": cfg.to_dict(), "stages": {}}
    log(f"writing everything under {out.resolve()}")

    # 1. data, through the CLI -------------------------------------------------------------------
    t0 = time.time()
    data = out / "data"
    manifest = data / "manifest.json"
    if not manifest.exists():
        command("builtin-data", "--out", data, "--procedural", cfg.num_assets, "--pybullet", 0, "--seed", cfg.seed)
    n_train = int(cfg.num_assets) - int(cfg.held_out)
    sets = [f"{k}={v}" for k, v in dict(cfg.data.to_dict(), voxel_resolution=R, encoder="tiny", encoder_image_size=70,
                                         batch_views=4, store_cond_views=-1, shard_size=8, seed=cfg.seed).items()]
    sets = [a for s in sets for a in ("--set", s)]
    command("build-data", "--manifest", manifest, "--out", data / "train", "--limit", n_train, "--no-progress", *sets)
    command("build-data", "--manifest", manifest, "--out", data / "heldout", "--skip", n_train, "--no-progress", *sets)
    summary["stages"]["data"] = time.time() - t0
    cap = bucket(largest_asset(data / "train"), cfg.capacity_buckets)
    work = out / "train"

    # 2a. SS VAE ------------------------------------------------------------------------------
    ss_cfg = stage_config(cfg, "ss_vae", data / "train", batch_size=B.ss_vae, steps=steps.ss_vae, extra=[f"data.resolution={R}"])
    summary["ss_vae"], ss_ckpts = train(cfg, "ss_vae", work / "ss_vae", ss_cfg)

    # 2b. SLat VAE (encoder + Gaussian decoder, trained by rendering) -------------------------
    sv_cfg = stage_config(cfg, "slat_vae", data / "train", batch_size=B.slat_vae, steps=steps.slat_vae,
                          extra=[f"data.capacity={cap}", f"data.render_size={cfg.render_resolution}"])
    sv_task = build_task(sv_cfg)
    held_cap = largest_asset(data / "heldout")
    if held_cap > cap:
        raise ValueError(f"a held-out asset has {held_cap} voxels, more than the training capacity {cap}")
    psnr_before = heldout_psnr(sv_task, initial_params(sv_cfg, sv_task), data / "heldout")
    summary["slat_vae"], slat_ckpts = train(cfg, "slat_vae", work / "slat_vae", sv_cfg)
    enc_m, dec_m = sv_cfg.model.encoder, sv_cfg.model.decoder
    slat_dec = load_exported(slat_ckpts, dec_m)
    psnr_after = heldout_psnr(sv_task, {"encoder": load_exported(slat_ckpts, enc_m)[3], "decoder": slat_dec[3]}, data / "heldout")
    summary["slat_vae"].update(heldout_psnr_before=psnr_before, heldout_psnr_after=psnr_after)
    log(f"slat_vae: held-out reconstruction PSNR {psnr_before:.2f} dB at initialisation -> {psnr_after:.2f} dB trained")

    # 2c. encode the dataset with the trained encoders (CLI), SLat statistics -------------------
    t0 = time.time()
    latents = data / "train_latents"
    command("encode-data", "--in", data / "train", "--out", latents, "--ss-encoder", ss_ckpts / ss_cfg.model.encoder.checkpoint,
            "--slat-encoder", slat_ckpts / enc_m.checkpoint, "--voxel-bucket", cap)
    slat_mean, slat_std = slat_statistics(latents)
    summary["stages"]["encode"] = time.time() - t0
    log(f"SLat normalisation (stat_latent rule): mean {np.round(slat_mean, 3).tolist()} std {np.round(slat_std, 3).tolist()}")
    ss_dec = load_exported(ss_ckpts, ss_cfg.model.decoder)

    # 2d. mesh decoder on the trained SLat encoder's latents (frozen, inside the step) ------------
    md_cfg = stage_config(cfg, "mesh_decoder", data / "train", batch_size=B.mesh_decoder, steps=steps.mesh_decoder,
                          extra=[f"model.encoder_checkpoint={slat_ckpts / enc_m.checkpoint}", f"data.capacity={cap}",
                                 f"render.image_size={cfg.mesh_render_resolution}"])
    summary["mesh_decoder"], mesh_ckpts = train(cfg, "mesh_decoder", work / "mesh_decoder", md_cfg)
    mesh_dec = load_exported(mesh_ckpts, md_cfg.model.decoder)

    # 3. flows, per condition kind, and 4. the pipelines (Gaussian + mesh decoders) ------------------------------------------
    pipelines = {}
    for kind in cfg.conditions:
        enc = load_image_conditioner(None, "tiny", seed=cfg.seed) if kind == "image" else load_text_conditioner(None, "tiny", seed=cfg.seed)
        cond = [f"cond.kind={kind}", "cond.arch=tiny", f"model.args.cond_channels={enc.model.config.hidden_size}"]
        gs_cfg = stage_config(cfg, "ss_flow", latents, batch_size=B.ss_flow, steps=steps.ss_flow, extra=cond)
        summary[f"ss_flow_{kind}"], gs_ckpts = train(cfg, f"ss_flow_{kind}", work / f"ss_flow_{kind}", gs_cfg)
        gl_cfg = stage_config(cfg, "slat_flow", latents, batch_size=B.slat_flow, steps=steps.slat_flow,
                              extra=cond + [f"data.capacity={cap}"])
        gl_cfg.slat_normalization.mean, gl_cfg.slat_normalization.std = slat_mean.tolist(), slat_std.tolist()
        summary[f"slat_flow_{kind}"], gl_ckpts = train(cfg, f"slat_flow_{kind}", work / f"slat_flow_{kind}", gl_cfg)

        sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}, "params": cfg.sampler.to_dict()}
        sampler["params"]["cfg_interval"] = list(sampler["params"]["cfg_interval"])
        wdir = out / f"weights_{kind}"
        save_pipeline(wdir, kind, {"sparse_structure_decoder": ss_dec,
                                   "sparse_structure_flow_model": load_exported(gs_ckpts, gs_cfg.model),
                                   "slat_flow_model": load_exported(gl_ckpts, gl_cfg.model),
                                   "slat_decoder_gs": slat_dec, "slat_decoder_mesh": mesh_dec},
                      ss_sampler=sampler, slat_sampler=sampler, slat_normalization={"mean": slat_mean, "std": slat_std},
                      cond_model="tiny-random", cond_encoder={"kind": kind, "arch": "tiny", "seed": cfg.seed, "weights": None})
        pipelines[kind] = wdir
        log(f"saved the {kind}-conditioned pipeline to {wdir}")

    # 5. sample held-out prompts through the official loader --------------------------------------
    from PIL import Image

    t0 = time.time()
    prompts = out / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    image_paths, captions = [], []
    for meta, rec in shards.read_dataset(str(data / "heldout"), fields=("cond_png", "cond_png_offsets")):
        p = prompts / f"{meta['id']}.png"
        Image.fromarray(unpack_png(rec["cond_png"], rec["cond_png_offsets"], 0)).save(p)
        image_paths.append(p)
        captions.append(meta["captions"][0] if meta.get("captions") else "")
    from trellis_jax.export.asset import AssetOptions

    assets = AssetOptions(**cfg.assets.to_dict()).check()
    results = {}
    for kind, wdir in pipelines.items():
        pipe, cmodel, k = load_generator(wdir, capacity=cfg.sample_capacity)
        results[kind] = generate(pipe, cmodel, k, images=image_paths if kind == "image" else (), texts=captions if kind == "text" else (),
                                 seeds=[cfg.seed + i for i in range(len(image_paths))], out_dir=out / "samples" / kind, resolution=R,
                                 assets=assets, log=log)
    summary["stages"]["sample"] = time.time() - t0
    summary["prompts"] = {"images": [str(p) for p in image_paths], "captions": captions}
    summary["outputs"], summary["skipped"] = {}, {}
    for kind, rs in results.items():
        names = [p.name for p in image_paths] if kind == "image" else captions
        summary["outputs"][kind], summary["skipped"][kind] = pair_outputs(rs, names)

    # 6. evaluate the held-out assets (the `eval` command, as a user would run it) -----------------
    if cfg.evaluate:
        t0 = time.time()
        held = data / "heldout"
        command("eval", "--config", "experiments/eval/reconstruction.py:tiny", "--workdir", out / "eval" / "reconstruction",
                f"--config.data={held}", f"--config.checkpoints.encoder={slat_ckpts / enc_m.checkpoint}",
                f"--config.checkpoints.decoder_gs={slat_ckpts / dec_m.checkpoint}",
                f"--config.checkpoints.decoder_mesh={mesh_ckpts / md_cfg.model.decoder.checkpoint}")
        for kind, wdir in pipelines.items():
            command("eval", "--config", "experiments/eval/generation.py:tiny", "--workdir", out / "eval" / f"generation_{kind}",
                    f"--config.data={held}", f"--config.pipeline={wdir}", f"--config.capacity={cfg.sample_capacity}")
        summary["stages"]["eval"] = time.time() - t0
        summary["eval"] = {p.name: {t: v["aggregate"] for t, v in json.loads((p / "metrics.json").read_text())["tasks"].items()}
                           for p in sorted((out / "eval").iterdir()) if (p / "metrics.json").exists()}
    summary["total_seconds"] = time.time() - t_start
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))

    log("done in %.1f min. Outputs:" % (summary["total_seconds"] / 60))
    for kind in results:
        for row in summary["outputs"][kind]:
            files = " ".join(Path(v).name for k, v in row.items() if k.endswith(("_ply", "_glb", "_png", "_mp4")))
            log(f"  [{kind}: {row['prompt']}] {row['dir']}: {files}")
        for prompt in summary["skipped"][kind]:
            log(f"  [{kind}: {prompt}] NOT exported (see the sample lines above)")
    log(f"  SLat VAE held-out reconstruction PSNR: {psnr_before:.2f} dB (init) -> {psnr_after:.2f} dB (trained)")
    log(f"  pipelines (official checkpoint layout): {', '.join(str(p) for p in pipelines.values())}")
    log(f"  training workdirs (metrics.jsonl, tb/): {work}; summary: {out / 'summary.json'}")
    if cfg.evaluate:
        log(f"  evaluation (tables above; metrics.json, metrics.csv, grids/): {out / 'eval'}")
    return summary


def main(argv=None) -> int:
    from trellis_jax.config_loader import load_config

    ap = argparse.ArgumentParser(prog="trellis-jax demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/demo.py:default", help="config file[:variant]")
    ap.add_argument("--out", help="output directory (overrides config.out)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    if args.out:
        cfg.out = args.out
    from trellis_jax.training.trainer import NonFiniteError

    try:
        run(cfg)
    except NonFiniteError as e:
        print(f"trellis-jax demo: error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, RuntimeError, ValueError) as e:  # a failed CLI step names its own problem above
        print(f"trellis-jax demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
