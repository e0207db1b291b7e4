"""Ablation sweeps over ml_collections variants: one command, one workdir per run, one summary table.

A sweep file (see `experiments/sweeps/`) has `get_sweep()` returning an ml_collections ConfigDict:

    base:   "experiments/train/<file>.py:<variant>"   the training config every run starts from
    runs:   {name: ["dotted.key=value", ...], ...}   one entry per run (config_flags overrides)
    steps:  optional number of steps override for every run

    python -m trellis_jax.sweep experiments/sweeps/tiny_ablation.py --workdir DIR [--only NAME ...] [--dry-run]

Each run is `python -m trellis_jax.train --config BASE --config.KEY=VALUE ... --workdir DIR/NAME` in
its own process (a failure is recorded and the sweep continues). The summary reads every run's
TensorBoard scalars and prints the final loss (and the best) per run, also saved as summary.csv.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from trellis_jax.config_loader import load_module
from trellis_jax.tools.tb_reader import read_scalars


def load_sweep(path: str | Path):
    """A sweep file's get_sweep() (through the one config loader), checked for 'base' and 'runs'."""
    module = load_module(path, "get_sweep")
    sweep = module.get_sweep()
    for key in ("base", "runs"):
        if key not in sweep:
            raise KeyError(f"{path}: sweep is missing '{key}'")
    return sweep


def run_command(sweep, name: str, workdir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "trellis_jax.train", "--config", sweep.base, "--workdir", str(workdir / name)]
    overrides = list(sweep.runs[name])
    if sweep.get("steps") and not any(o.startswith("total_steps=") for o in overrides):
        overrides.append(f"total_steps={sweep.steps}")
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"run {name!r}: override {o!r} is not of the form dotted.key=value")
    return cmd + [f"--config.{o}" for o in overrides]


def summarize(workdir: Path, names, loss_tag: str = "train/loss") -> list[dict]:
    rows = []
    for name in names:
        scalars = read_scalars(workdir / name) if (workdir / name).exists() else {}
        curve = scalars.get(loss_tag) or next((v for k, v in scalars.items() if k.endswith("loss")), [])
        rows.append({
            "run": name,
            "steps": curve[-1][0] if curve else 0,
            "first_loss": curve[0][1] if curve else float("nan"),
            "final_loss": curve[-1][1] if curve else float("nan"),
            "best_loss": min(v for _, v in curve) if curve else float("nan"),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'run':<24} {'steps':>6} {'first_loss':>11} {'final_loss':>11} {'best_loss':>11}"
    lines = [head, "-" * len(head)]
    lines += [f"{r['run']:<24} {r['steps']:>6} {r['first_loss']:>11.5f} {r['final_loss']:>11.5f} {r['best_loss']:>11.5f}" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--only", nargs="*", default=None, help="run only these names")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--summary-only", action="store_true", help="read existing logs, run nothing")
    args = ap.parse_args(argv)
    sweep = load_sweep(args.sweep)
    names = [n for n in sweep.runs if args.only is None or n in args.only]
    unknown = set(args.only or []) - set(sweep.runs)
    if unknown:
        ap.error(f"unknown run names {sorted(unknown)}; the sweep defines {list(sweep.runs)}")
    failures = {}
    if not args.summary_only:
        for name in names:
            cmd = run_command(sweep, name, args.workdir)
            print(" ".join(cmd), flush=True)
            if args.dry_run:
                continue
            t0 = time.time()
            res = subprocess.run(cmd)
            print(f"sweep: {name} finished rc={res.returncode} in {time.time() - t0:.1f}s", flush=True)
            if res.returncode:
                failures[name] = res.returncode
        if args.dry_run:
            return 0
    rows = summarize(args.workdir, names)
    table = format_table(rows)
    print(table)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with open(args.workdir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
        w.writeheader()
        w.writerows(rows)
    if failures:
        print(f"sweep: failed runs {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
