"""Driver: every stage over a manifest, into crash-safe ArrayRecord shards.

    python -m data_pipeline.build --manifest M.json --out DIR [--config CFG.py] [--set key=value ...]
                                  [--retry-failures] [--limit N]

Output directory:
    DIR/shards/data-NNNNN.arrayrecord (+ .ids.json)   records, schema in trellis_jax/data/schema.py
    DIR/failures.jsonl                                one JSON line per bad asset: id, path, stage, reason
    DIR/warnings.jsonl                                one JSON line per accepted asset with a problem (e.g.
                                                      a missing texture file; also in the record's meta)
    DIR/dataset.json                                  schema version and the config used

Restart semantics: assets in committed shards and assets listed in failures.jsonl are skipped; the
shard that was open when a run died is discarded and its assets are redone, so after any sequence of
crashes and restarts every asset is in the final shards exactly once (or in failures.jsonl).
`--retry-failures` gives failed assets another try. A restart with a config that differs from the
stored dataset.json (other than the execution-only keys in RESTART_FREE_KEYS) is refused, naming the
keys, so one dataset never mixes records of two settings. The exit code is 1 when every asset failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from data_pipeline import config as config_lib
from trellis_jax.data import schema, shards
from data_pipeline.ingest import AssetError
from trellis_jax.atomic import atomic_write_text
from trellis_jax.workdir_lock import WorkdirLock, WorkdirLockedError

FAILURES = "failures.jsonl"
WARNINGS = "warnings.jsonl"
RESTART_FREE_KEYS = ("batch_views", "shard_size")  # change how, not what, is written
MAX_CONSECUTIVE_UNEXPECTED = 20


def read_failures(root: str) -> dict[str, dict]:
    path = os.path.join(root, FAILURES)
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut by a crash
                    continue
                out[row["id"]] = row
    return out


def _append_failure(root: str, row: dict, name: str = FAILURES):
    with open(os.path.join(root, name), "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_same_config(out: str, cfg) -> None:
    """ValueError naming the differing keys if OUT/dataset.json was written with another config."""
    path = os.path.join(out, "dataset.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
        old = stored["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); move it away only if the dataset is empty") from e
    if stored.get("schema_version") != schema.SCHEMA_VERSION:
        raise ValueError(f"{path}: dataset written with record schema {stored.get('schema_version')}, "
                         f"this code writes {schema.SCHEMA_VERSION}; use a new --out")
    new = cfg.to_dict()
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in RESTART_FREE_KEYS and old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{path}: this dataset was built with another config ({'; '.join(diff)}); "
                         f"restart with the same settings or use a new --out")


def build(manifest: list[dict], out: str, cfg, *, retry_failures: bool = False, progress: bool = True,
          processor=None, log=print) -> dict:
    """Process every manifest entry not yet done; returns a summary dict (counts, timings, rate).
    Holds OUT/LOCK meanwhile: a second build on the same OUT stops naming the first (WorkdirLockedError)."""
    os.makedirs(out, exist_ok=True)
    with WorkdirLock(out, log):  # one builder per dataset directory
        return _build(manifest, out, cfg, retry_failures=retry_failures, progress=progress, processor=processor, log=log)


def _build(manifest, out, cfg, *, retry_failures, progress, processor, log) -> dict:
    from data_pipeline.process import AssetProcessor

    check_same_config(out, cfg)
    atomic_write_text(os.path.join(out, "dataset.json"),
                      json.dumps({"schema_version": schema.SCHEMA_VERSION, "config": cfg.to_dict()}, indent=1))
    failures = read_failures(out)
    if retry_failures and failures:
        os.replace(os.path.join(out, FAILURES), os.path.join(out, FAILURES + ".previous"))
        failures = {}
    writer = shards.ShardWriter(out, "data", cfg.shard_size)  # recovers from an interrupted run
    done = shards.committed_ids(out)
    todo = [e for e in manifest if e["id"] not in done and e["id"] not in failures]
    log(f"build: {len(manifest)} assets in manifest, {len(done)} done, {len(failures)} failed before, "
        f"{len(todo)} to process")
    proc = processor or AssetProcessor(cfg)
    n_ok = n_fail = unexpected_streak = 0
    t0 = time.perf_counter()
    try:
        for entry in tqdm(todo, desc="assets", unit="asset", disable=not progress, file=sys.stderr):
            proc.stage = None
            try:
                record = proc.process(entry)
            except Exception as e:  # one bad asset must not stop the run
                expected = isinstance(e, AssetError)
                unexpected_streak = 0 if expected else unexpected_streak + 1
                _append_failure(out, {"id": entry["id"], "path": entry["path"], "stage": proc.stage,
                                      "reason": str(e) if expected else f"{type(e).__name__}: {e}"})
                n_fail += 1
                if unexpected_streak >= MAX_CONSECUTIVE_UNEXPECTED:
                    raise RuntimeError(f"{unexpected_streak} assets in a row failed with unexpected errors "
                                       f"(last: {type(e).__name__}: {e}); stopping, see {FAILURES}") from e
                continue
            unexpected_streak = 0
            for warning in getattr(proc, "warnings", ()):
                log(f"build: {entry['id']}: WARNING: {warning}")
                _append_failure(out, {"id": entry["id"], "path": entry["path"], "warning": warning}, WARNINGS)
            writer.add(entry["id"], record)
            n_ok += 1
        writer.close()
    finally:
        if processor is None:
            proc.close()
    elapsed = time.perf_counter() - t0
    rate = 60.0 * (n_ok + n_fail) / elapsed if elapsed > 0 else 0.0
    summary = {"processed": n_ok, "failed": n_fail, "skipped": len(manifest) - len(todo), "seconds": elapsed,
               "assets_per_min": rate, "stage_seconds": dict(proc.timings)}
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in proc.timings.items())
    log(f"build: {n_ok} written, {n_fail} failed in {elapsed:.1f}s -> {rate:.2f} assets/min ({stages})")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSON or CSV manifest (see data_pipeline.config)")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None, help="python file with get_config() (default: reference settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--retry-failures", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="only the first N manifest entries")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = config_lib.load_config(args.config, args.set)
        manifest = config_lib.read_manifest(args.manifest)[: args.limit]
        summary = build(manifest, args.out, cfg, retry_failures=args.retry_failures, progress=not args.no_progress)
    except (OSError, ValueError, KeyError, RuntimeError, WorkdirLockedError) as e:
        print(f"trellis-jax build-data: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if summary["failed"] and not summary["processed"]:
        print(f"trellis-jax build-data: error: every asset failed ({summary['failed']}); see "
              f"{os.path.join(args.out, FAILURES)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
