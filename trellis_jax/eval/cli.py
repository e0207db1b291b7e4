"""`trellis-jax eval`: the paper's reconstruction and generation tables from one command.

    trellis-jax eval --config experiments/eval/reconstruction.py:tiny --workdir W [--config.key=value ...]
    trellis-jax eval --config experiments/eval/generation.py:tiny --workdir W

Reads the held-out records of a `build-data` dataset (`config.data`), runs the config's tasks
(reconstruction: SLat VAE encode/decode/render; generation: sample a pipeline directory on the records'
prompts) and writes into W: metrics.json (config, per-task aggregates, per-asset rows, which metric
networks were random, notes on what was not computed), metrics.csv (one row per asset and task) and
grids/<asset>.png (ground truth | Gaussian reconstruction | RF render | GT normals | mesh normals | sample,
those present, one row per view); the markdown table goes to stdout. Reconstruction covers the Gaussian
decoder (PSNR / SSIM / LPIPS), the mesh decoder (CD, F-score, PSNR-N, LPIPS-N) and the radiance-field
decoder (a second appearance row) when their checkpoints are given. Without real weights for
a metric network (LPIPS VGG16, DINOv2, CLIP) or for the models under test, the run says loudly that
those figures are meaningless. Bad input is one error line naming the file or the option.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TASKS = ("reconstruction", "generation")


def read_records(data: str, num_assets: int, fields=None) -> list:
    """The first `num_assets` (-1: all) records (meta, arrays) of a `build-data` dataset directory."""
    from trellis_jax.data.shards import list_shards, read_dataset

    if not data:
        raise ValueError("config.data is empty: give a `build-data` dataset directory (--config.data=DIR)")
    if not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: dataset directory not found (run `trellis-jax demo` or `trellis-jax build-data` first)")
    if not list_shards(data):
        raise ValueError(f"{data}: no committed shards (not a `build-data` dataset, or an unfinished build)")
    records = []
    for meta, arrays in read_dataset(data, fields):
        if 0 <= num_assets <= len(records):
            break
        records.append((meta, arrays))
    if not records:
        raise ValueError(f"{data}: the dataset holds no records")
    return records


def reconstruction_notes(model, records) -> list[str]:
    """Why a reconstruction column or row is '–' (missing decoders or record fields)."""
    notes = []
    if model.decoder_mesh is None:
        notes.append("CD / F-score / PSNR-N / LPIPS-N not computed: no mesh decoder (set checkpoints.decoder_mesh)")
    else:
        if not any("surface_points" in a for _, a in records):
            notes.append("CD / F-score not computed: the records carry no surface_points (build-data surface_points > 0)")
        if not any("views_normal_png" in a for _, a in records):
            notes.append("PSNR-N / LPIPS-N not computed: the records carry no normal renders (rebuild with build-data, "
                         "store_depth_normal=True)")
    if model.decoder_rf is None:
        notes.append("radiance-field row not evaluated: no RF decoder (set checkpoints.decoder_rf)")
    return notes


def _banner(lines: list[str], log) -> None:
    bar = "!" * 100
    log(bar)
    for line in lines:
        log(f"!!! {line}")
    log(bar)


def run(cfg, workdir: str | Path, log=print) -> dict:
    """Evaluate per `cfg` (experiments/eval/*.py) into `workdir`; returns the metrics.json content."""
    from trellis_jax.atomic import check_writable_dir
    from trellis_jax.eval import report
    from trellis_jax.eval.extractors import load_extractors

    tasks = tuple(cfg.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"config.tasks: unknown task(s) {unknown} (known: {list(TASKS)})")
    workdir = check_writable_dir(workdir)
    t0 = time.time()
    records = read_records(cfg.data, int(cfg.num_assets))
    log(f"{len(records)} held-out record(s) from {cfg.data}")
    result = {"config": cfg.to_dict(), "tasks": {}, "random_networks": [], "per_asset": []}
    images: dict[str, dict] = {}
    tables = []
    gen_kind = None
    pipe = cond_model = None
    if "generation" in tasks:
        from trellis_jax.sample import load_generator

        pipe, cond_model, gen_kind = load_generator(cfg.pipeline, capacity=int(cfg.capacity))
        pipe = pipe.with_samplers(formats=("gaussian",))  # the generation metrics score Gaussian renders only
        if not cond_model.pretrained:
            result["random_networks"].append(f"condition encoder ({cond_model.description})")
    ex = load_extractors(cfg, log, lpips="reconstruction" in tasks, generation="generation" in tasks, need_text=gen_kind == "text")
    result["random_networks"] += ex.random_networks
    if "reconstruction" in tasks and ex.lpips_params is None:
        result["random_networks"].append("LPIPS (no VGG16 backbone: LPIPS not computed)")
    paper = dict(cfg.get("paper", {}) or {})

    if "reconstruction" in tasks:
        from trellis_jax.eval.reconstruction import evaluate_asset, load_autoencoder

        meta0, a0 = records[0]
        model = load_autoencoder(cfg, int(meta0.get("resolution", 64)), int(a0["features"].shape[1]), log)
        if not model.pretrained:
            result["random_networks"].append("SLat VAE under test (random weights)")
        notes = reconstruction_notes(model, records)
        rows = []
        for meta, arrays in records:
            try:
                row, imgs = evaluate_asset(model, ex, meta, arrays, cfg)
            except ValueError as e:
                raise ValueError(f"{cfg.data}: asset {meta['id']!r}: {e}") from e
            rows.append(row)
            images.setdefault(meta["id"], {}).update(imgs)
            log(f"[reconstruction] {meta['id']}: PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f}"
                + (f" LPIPS {row['lpips']:.4f}" if row["lpips"] is not None else ""))
        keys = [k for _, k, _ in report.RECONSTRUCTION_COLUMNS] + ["rf_psnr", "rf_ssim", "rf_lpips"]
        agg = report.mean_over_assets(rows, keys)
        result["tasks"]["reconstruction"] = {"aggregate": agg, "num_assets": len(rows), "notes": notes}
        result["per_asset"] += [{"task": "reconstruction", **r} for r in rows]
        tag = "" if model.pretrained else " [RANDOM]"
        geometry = "; geometry: mesh decoder" if model.decoder_mesh is not None else ""
        table_rows = [(f"trellis-jax SLat (Gaussian decoder{geometry})" + tag, agg)]
        if model.decoder_rf is not None:
            table_rows.append(("trellis-jax SLat (radiance-field decoder)" + tag,
                               {k: agg[f"rf_{k}"] for k in ("psnr", "ssim", "lpips")}))
        table = report.markdown_table(report.RECONSTRUCTION_COLUMNS, table_rows + [(k, v) for k, v in paper.items() if "psnr" in v])
        tables.append(("Reconstruction fidelity", table + "".join(f"\n\n– {n}" for n in notes)))

    if "generation" in tasks:
        from trellis_jax.eval.generation import evaluate_samples

        rows, summary, gen_images = evaluate_samples(records, pipe, cond_model, gen_kind, ex, cfg, log)
        for aid, imgs in gen_images.items():
            images.setdefault(aid, {}).setdefault("ground_truth", imgs["ground_truth"])
            images[aid]["sample"] = imgs["sample"]
        agg = {**report.mean_over_assets(rows, ["clip_score"]), "fd_dinov2": summary["fd_dinov2"], "kd_dinov2_x100": summary["kd_dinov2_x100"]}
        result["tasks"]["generation"] = {"aggregate": agg, "kind": gen_kind, "pipeline": str(cfg.pipeline), **summary}
        result["per_asset"] += [{"task": "generation", **r} for r in rows]
        name = f"trellis-jax {gen_kind}-to-3D ({Path(cfg.pipeline).name}; {summary['evaluated']}/{summary['evaluated'] + len(summary['failed'])} sampled)"
        tables.append(("Generation", report.markdown_table(
            report.GENERATION_COLUMNS, [(name, agg)] + [(k, v) for k, v in paper.items() if "clip_score" in v and f"{gen_kind}-to-3D" in k])))

    result["meaningful"] = not result["random_networks"]
    result["seconds"] = time.time() - t0
    for aid, cols in images.items():
        order = [k for k in ("ground_truth", "reconstruction", "rf", "normal_gt", "normal", "sample") if k in cols]
        report.write_grid(workdir / "grids" / f"{aid}.png", {k: cols[k] for k in order}, int(cfg.grid_views))
    report.write_csv(workdir / "metrics.csv", result["per_asset"])
    report.write_json(workdir / "metrics.json", result)

    for title, table in tables:
        print(f"\n### {title}\n\n{table}\n", flush=True)
    if result["random_networks"]:
        _banner(["THESE FIGURES ARE MEANINGLESS: random weights were used for"] + [f"  - {r}" for r in result["random_networks"]]
                + ["give real weights in config.networks / config.checkpoints / config.pipeline"], log)
    log(f"wrote {workdir / 'metrics.json'}, {workdir / 'metrics.csv'} and {len(images)} grid(s) in {workdir / 'grids'} "
        f"({result['seconds']:.0f}s)")
    return result


def main(argv=None) -> int:
    from trellis_jax.config_loader import load_config, split_config_overrides

    ap = argparse.ArgumentParser(prog="trellis-jax eval", description=__doc__.splitlines()[0],
                                 epilog="Any config key can be overridden: --config.data=DIR --config.num_views=8")
    ap.add_argument("--config", required=True, help="experiments/eval/<reconstruction|generation>.py:<tiny|toys4k>")
    ap.add_argument("--workdir", required=True, help="output directory (metrics.json, metrics.csv, grids/)")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = split_config_overrides(rest, ap.error)
    try:
        cfg = load_config(args.config, overrides)
    except (KeyError, ValueError, FileNotFoundError, AttributeError) as e:
        print(f"trellis-jax eval: config error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr, flush=True)
        return 2
    try:
        run(cfg, args.workdir)
    except (ValueError, KeyError, OSError) as e:  # bad data / weights / checkpoint / workdir: one line naming it
        print(f"trellis-jax eval: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
