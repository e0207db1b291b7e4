"""The embedded end-to-end default: built-in data -> tiny TRELLIS models -> 3D assets, on a CPU.

    trellis-jax demo [--config experiments/demo.py:default] [--out DIR]
    python -m trellis_jax.demo

1. builds the built-in dataset (procedural textured meshes with captions): renders, 32³ voxels,
   voxel features from a frozen tiny DINOv2, ArrayRecord shards (held-out assets kept apart);
2. trains the SS VAE (Dice + KL) and the SLat VAE (encoder + Gaussian decoder, by differentiable
   splatting against the renders), encodes the dataset's SS and SLat latents, measures the SLat
   normalisation statistics;
3. trains G_S and G_L for image and for text conditions (rectified flow, CFG dropout);
4. saves each pipeline as an official-format checkpoint directory (pipeline.json + ckpts/), reloads it
   through the official loader, and samples the held-out images / captions in one jitted call each;
5. writes per asset: gaussians.ply (3DGS), voxels.ply, voxels.glb, preview.png; prints where.
The condition encoders have RANDOM frozen weights (pretrained DINOv2/CLIP cannot be downloaded here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from trellis_jax.training.objective import flow_loss
from trellis_jax.losses.slat_vae import slat_vae_loss
from trellis_jax.losses.vae import dice_loss, kl_divergence
from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.sparse.tensor import SparseTensor


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- training helper
def fit(name: str, loss_fn, params, batches, steps: int, lr: float, seed: int, log_dir: Path):
    """AdamW (wd 0, betas 0.9/0.999) + global-norm clip 1.0; jitted donated step; losses to JSONL.

    loss_fn(params, batch, rng) -> (loss, metrics dict). Stops with a clear error on a non-finite loss.
    """
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, 0.9, 0.999, 1e-8, weight_decay=0.0))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads), metrics

    log_dir.mkdir(parents=True, exist_ok=True)
    losses, t0, rng = [], time.time(), jax.random.PRNGKey(seed)
    with open(log_dir / f"{name}.jsonl", "w") as f:
        bar = tqdm(range(steps), desc=f"train {name}", unit="step", file=sys.stderr, mininterval=2)
        for i in bar:
            batch = next(batches)
            rng, k = jax.random.split(rng)
            params, opt_state, loss, gnorm, metrics = step(params, opt_state, batch, k)
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite loss at step {i}")
            losses.append(loss)
            rec = {"step": i, "loss": loss, "grad_norm": float(gnorm), **{k: float(v) for k, v in metrics.items()}}
            f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}")
    first, last = np.mean(losses[: max(1, len(losses) // 10)]), np.mean(losses[-max(1, len(losses) // 10):])
    log(f"{name}: {steps} steps in {time.time() - t0:.0f}s, loss {first:.4f} -> {last:.4f}")
    return params, {"first_loss": float(first), "last_loss": float(last), "seconds": time.time() - t0}


def pair_outputs(results: list[dict], prompts: list[str]) -> tuple[list[dict], list[str]]:
    """generate()'s results (each with its sample 'index') -> ([{prompt, dir, files...}] of the exported
    samples, prompts whose sample was not exported). Pairs by index, never by position in `results`."""
    rows = [{"prompt": prompts[r["index"]], **{k: str(v) for k, v in r.items() if k != "prompt"}} for r in results]
    done = {r["index"] for r in results}
    return rows, [p for i, p in enumerate(prompts) if i not in done]


def init_params(module, seed):
    return nn.meta.unbox(module.init(jax.random.PRNGKey(seed), *dummy_inputs(module)))


# ----------------------------------------------------------------------------- the job
def run(cfg) -> dict:
    from data_pipeline import build as dp_build
    from data_pipeline import config as dp_config
    from trellis_jax.data import shards
    from data_pipeline.builtin import write_builtin
    from data_pipeline.encode import encode_dataset, encoders_from_modules
    from trellis_jax.data.loaders import RecordSource, make_loader
    from trellis_jax.data.schema import unpack_png
    from trellis_jax.checkpoints import save_model
    from trellis_jax.conditioning import load_image_conditioner, load_text_conditioner
    from trellis_jax.encoders.dinov2 import image_condition
    from trellis_jax.encoders.clip_text import text_condition
    from trellis_jax.atomic import atomic_write_text, check_output_dir
    from trellis_jax.sample import generate, load_generator

    t_start = time.time()
    out = Path(cfg.out)
    for kind in cfg.conditions:  # a finished run's samples are never overwritten (checked before training)
        check_output_dir(out / "samples" / kind)
    R, B = cfg.voxel_resolution, cfg.batch_size
    summary: dict = {"config": cfg.to_dict(), "stages": {}}
    log(f"writing everything under {out.resolve()}")

    # 1. data --------------------------------------------------------------------------------
    t0 = time.time()
    data = out / "data"
    manifest = data / "manifest.json"
    if not manifest.exists():
        write_builtin(str(data), procedural=cfg.num_assets, pybullet=0, seed=cfg.seed)
    entries = dp_config.read_manifest(str(manifest))
    train_entries, held_entries = entries[: -cfg.held_out], entries[-cfg.held_out:]
    dcfg = dp_config.get_config()
    dcfg.update(dict(cfg.data.to_dict(), voxel_resolution=R, encoder="tiny", encoder_image_size=70, batch_views=4,
                     store_cond_views=-1, shard_size=8, seed=cfg.seed))
    dp_build.build(train_entries, str(data / "train"), dcfg, progress=False, log=log)
    dp_build.build(held_entries, str(data / "heldout"), dcfg, progress=False, log=log)
    summary["stages"]["data"] = time.time() - t0

    image_cond = load_image_conditioner(None, "tiny", seed=cfg.seed)
    text_cond = load_text_conditioner(None, "tiny", seed=cfg.seed) if "text" in cfg.conditions else None
    log(f"condition encoders: {image_cond.description}" + (f"; {text_cond.description}" if text_cond else ""))
    buckets = tuple(cfg.capacity_buckets)
    cap = max(buckets)
    M = cfg.models
    loader = lambda stage, **kw: iter(make_loader(str(kw.pop("root", data / "train")), stage, batch_size=kw.pop("bs", B),
                                                  buckets=kw.pop("buckets", (cap,)), max_voxels=cap, resolution=R, shuffle=True, seed=cfg.seed,
                                                  shard_index=0, shard_count=1, **kw))

    # 2a. SS VAE ------------------------------------------------------------------------------
    ss_enc = build_model("SparseStructureEncoder", M.ss_enc.to_dict())
    ss_dec = build_model("SparseStructureDecoder", M.ss_dec.to_dict())
    ss_params = {"enc": init_params(ss_enc, cfg.seed), "dec": init_params(ss_dec, cfg.seed + 1)}

    def ss_vae_loss(p, batch, rng):
        x = batch["occupancy"]
        z, mean, logvar = ss_enc.apply(p["enc"], x, sample_posterior=True, rng=rng)
        logits = ss_dec.apply(p["dec"], z)
        dice = dice_loss(logits, x)
        kl = kl_divergence(mean, logvar)
        return dice + 1e-3 * kl, {"dice": dice, "kl": kl}

    ss_params, summary["ss_vae"] = fit("ss_vae", ss_vae_loss, ss_params, loader("ss_vae", bs=cfg.ss_vae_batch_size), cfg.steps.ss_vae, cfg.lr, cfg.seed, out / "logs")

    # 2b. SLat VAE (encoder + Gaussian decoder, trained by rendering) -------------------------
    slat_enc = build_model("SLatEncoder", M.slat_enc.to_dict())
    gs_dec = build_model("SLatGaussianDecoder", M.slat_dec_gs.to_dict())
    slat_params = {"encoder": init_params(slat_enc, cfg.seed + 2), "decoder": init_params(gs_dec, cfg.seed + 3)}
    vae_batches = (dict(coords=b["coords"], feats=b["feats"].astype(np.float32), mask=b["mask"], image=b["image"], alpha=b["alpha"],
                        extrinsics=b["extrinsics"], intrinsics=b["intrinsics"])
                   for b in loader("slat_vae", render_size=cfg.render_resolution, bs=max(1, B // 2)))
    slat_params, summary["slat_vae"] = fit("slat_vae", lambda p, b, r: slat_vae_loss(slat_enc, gs_dec, p, b, r), slat_params,
                                           vae_batches, cfg.steps.slat_vae, cfg.lr, cfg.seed, out / "logs")

    # 2c. encode the dataset, SLat statistics ---------------------------------------------------
    t0 = time.time()
    ss_encode, slat_encode = encoders_from_modules(ss_enc, ss_params["enc"], slat_enc, slat_params["encoder"])
    encode_dataset(str(data / "train"), str(data / "train_latents"), ss_encode, slat_encode, voxel_bucket=cap, progress=False, log=log)
    src = RecordSource(shards.list_shards(str(data / "train_latents")), ("slat",))
    means = np.stack([src[i]["slat"].mean(0) for i in range(len(src))])
    sq = np.stack([np.square(src[i]["slat"]).mean(0) for i in range(len(src))])
    slat_mean = means.mean(0)
    slat_std = np.sqrt(np.maximum(sq.mean(0) - slat_mean**2, 1e-8))
    summary["stages"]["encode"] = time.time() - t0
    log(f"SLat normalisation (stat_latent rule): mean {np.round(slat_mean, 3).tolist()} std {np.round(slat_std, 3).tolist()}")

    # 3. flows, per condition kind --------------------------------------------------------------
    pipelines = {}
    for kind in cfg.conditions:
        enc = image_cond if kind == "image" else text_cond
        cc = enc.model.config.hidden_size

        def encode_cond(batch, enc=enc, kind=kind):
            if kind == "image":
                return image_condition(enc.model, enc.params, batch["cond_image"])
            return text_condition(enc.model, enc.params, batch["input_ids"])

        neg = enc.negative(1)
        prep = (lambda b: {**{k: v for k, v in b.items() if k != "caption"}, "input_ids": text_cond.tokenizer(list(b["caption"]))}) \
            if kind == "text" else (lambda b: b)
        gs = build_model("SparseStructureFlowModel", dict(M.ss_flow.to_dict(), cond_channels=cc))
        gs_params = init_params(gs, cfg.seed + 4)

        def gs_loss(p, batch, rng, gs=gs, encode_cond=encode_cond, neg=neg):
            c = jax.lax.stop_gradient(encode_cond(batch))
            loss = flow_loss(lambda x, t, cnd: gs.apply(p, x, t, cnd), batch["ss_latent"], c, neg, rng)
            return loss, {}

        gs_params, summary[f"ss_flow_{kind}"] = fit(
            f"ss_flow_{kind}", gs_loss, gs_params,
            (prep(b) for b in loader("ss_flow", root=data / "train_latents", cond=kind, cond_image_size=image_cond.image_size)),
            cfg.steps.ss_flow, cfg.lr, cfg.seed, out / "logs")

        gl = build_model("SLatFlowModel", dict(M.slat_flow.to_dict(), cond_channels=cc))
        gl_params = init_params(gl, cfg.seed + 5)

        def gl_loss(p, batch, rng, gl=gl, encode_cond=encode_cond, neg=neg):
            c = jax.lax.stop_gradient(encode_cond(batch))
            coords, mask = batch["coords"], batch["mask"]
            vel = lambda x, t, cnd: gl.apply(p, SparseTensor(coords, x, mask, R), t, cnd).feats
            return flow_loss(vel, batch["feats"], c, neg, rng, mask=mask), {}

        gl_params, summary[f"slat_flow_{kind}"] = fit(
            f"slat_flow_{kind}", gl_loss, gl_params,
            (prep(b) for b in loader("slat_flow", root=data / "train_latents", cond=kind, cond_image_size=image_cond.image_size,
                                     slat_normalization=(slat_mean, slat_std), bs=cfg.slat_flow_batch_size, buckets=buckets)),
            cfg.steps.slat_flow, cfg.lr, cfg.seed, out / "logs")

        # 4. save as an official-format pipeline directory ------------------------------------
        wdir = out / f"weights_{kind}"
        names = {"sparse_structure_decoder": ("ss_dec", "SparseStructureDecoder", M.ss_dec.to_dict(), ss_params["dec"]),
                 "sparse_structure_flow_model": ("ss_flow", "SparseStructureFlowModel", dict(M.ss_flow.to_dict(), cond_channels=cc), gs_params),
                 "slat_flow_model": ("slat_flow", "SLatFlowModel", dict(M.slat_flow.to_dict(), cond_channels=cc), gl_params),
                 "slat_decoder_gs": ("slat_dec_gs", "SLatGaussianDecoder", M.slat_dec_gs.to_dict(), slat_params["decoder"])}
        for role, (fname, cls, args, p) in names.items():
            save_model(wdir / "ckpts" / fname, cls, args, p)
        save_model(wdir / "ckpts" / "ss_enc", "SparseStructureEncoder", M.ss_enc.to_dict(), ss_params["enc"])
        save_model(wdir / "ckpts" / "slat_enc", "SLatEncoder", M.slat_enc.to_dict(), slat_params["encoder"])
        sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}, "params": cfg.sampler.to_dict()}
        sampler["params"]["cfg_interval"] = list(sampler["params"]["cfg_interval"])
        pipeline_json = {
            "name": "TrellisImageTo3DPipeline" if kind == "image" else "TrellisTextTo3DPipeline",
            "args": {
                "models": {role: f"ckpts/{names[role][0]}" for role in names},
                "sparse_structure_sampler": sampler, "slat_sampler": sampler,
                "slat_normalization": {"mean": slat_mean.tolist(), "std": slat_std.tolist()},
                ("image_cond_model" if kind == "image" else "text_cond_model"): "tiny-random",
                "cond_encoder": {"kind": kind, "arch": "tiny", "seed": cfg.seed, "weights": None},
            },
        }
        atomic_write_text(wdir / "pipeline.json", json.dumps(pipeline_json, indent=2))
        pipelines[kind] = wdir
        log(f"saved the {kind}-conditioned pipeline to {wdir}")

    # 5. sample held-out prompts through the official loader --------------------------------------
    t0 = time.time()
    held = RecordSource(shards.list_shards(str(data / "heldout")), ("cond_png", "cond_png_offsets"))
    prompts = out / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    image_paths, captions = [], []
    for i in range(len(held)):
        rec = held[i]
        from PIL import Image

        p = prompts / f"{rec['id']}.png"
        Image.fromarray(unpack_png(rec["cond_png"], rec["cond_png_offsets"], 0)).save(p)
        image_paths.append(p)
        captions.append(rec["captions"][0] if rec["captions"] else "")
    results = {}
    for kind, wdir in pipelines.items():
        pipe, cmodel, k = load_generator(wdir, capacity=cfg.sample_capacity)
        results[kind] = generate(pipe, cmodel, k, images=image_paths if kind == "image" else (), texts=captions if kind == "text" else (),
                                 seeds=[cfg.seed + i for i in range(len(held))], out_dir=out / "samples" / kind, resolution=R, log=log)
    summary["stages"]["sample"] = time.time() - t0
    summary["prompts"] = {"images": [str(p) for p in image_paths], "captions": captions}
    summary["outputs"], summary["skipped"] = {}, {}
    for kind, rs in results.items():
        names = [p.name for p in image_paths] if kind == "image" else captions
        summary["outputs"][kind], summary["skipped"][kind] = pair_outputs(rs, names)
    summary["total_seconds"] = time.time() - t_start
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))

    log("done in %.1f min. Outputs:" % (summary["total_seconds"] / 60))
    for kind in results:
        for row in summary["outputs"][kind]:
            log(f"  [{kind}: {row['prompt']}] {row['dir']}: gaussians.ply voxels.ply voxels.glb preview.png")
        for prompt in summary["skipped"][kind]:
            log(f"  [{kind}: {prompt}] NOT exported (see the sample lines above)")
    log(f"  pipelines (official checkpoint layout): {', '.join(str(p) for p in pipelines.values())}")
    log(f"  loss curves: {out / 'logs'}; summary: {out / 'summary.json'}")
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
    try:
        run(cfg)
    except FileExistsError as e:
        print(f"trellis-jax demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
