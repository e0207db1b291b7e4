"""The build pipeline on Apache Beam (DirectRunner locally; Dataflow/Flink/Spark to scale out).

    python -m data_pipeline.beam_pipeline --manifest M.json --out DIR [--config CFG.py] [--set k=v]
        [--num-shards 16] [-- <beam pipeline options, e.g. --runner=DataflowRunner ...>]

Graph: manifest entries (minus ids already committed in DIR, and minus recorded failures)
  -> ProcessAsset (one `AssetProcessor` per worker: renderers and jitted encoder built once in setup)
  -> records keyed by a stable shard number -> GroupByKey -> WriteShard (one committed ArrayRecord
     shard per key, named `beam<run>_<key>-00000.arrayrecord`, crash-safe like the local driver)
  failures -> one appended failures.jsonl.
Output is the same dataset layout as `data_pipeline.build`, so loaders and `encode` read either.
A failed or retried Beam bundle leaves only `.tmp` files (removed at the next run), never a
half-written committed shard.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipeline import config as config_lib
from trellis_jax.data import schema, shards
from data_pipeline.build import FAILURES, read_failures
from data_pipeline.ingest import AssetError


class ProcessAsset(beam.DoFn):
    """entry -> (shard key, (id, record bytes)); bad assets go to the 'failed' output."""

    FAILED = "failed"

    def __init__(self, cfg_dict: dict, num_shards: int):
        self.cfg_dict, self.num_shards = cfg_dict, num_shards

    def setup(self):
        import ml_collections

        from data_pipeline.process import AssetProcessor

        self.proc = AssetProcessor(ml_collections.ConfigDict(self.cfg_dict))

    def teardown(self):
        self.proc.close()

    def process(self, entry):
        self.proc.stage = None
        try:
            record = self.proc.process(entry)
        except Exception as e:
            reason = str(e) if isinstance(e, AssetError) else f"{type(e).__name__}: {e}"
            yield beam.pvalue.TaggedOutput(self.FAILED, {"id": entry["id"], "path": entry["path"],
                                                         "stage": self.proc.stage, "reason": reason})
            return
        key = int.from_bytes(hashlib.sha256(entry["id"].encode()).digest()[:4], "little") % self.num_shards
        yield key, (entry["id"], record)


class WriteShard(beam.DoFn):
    """(key, [(id, record)]) -> one committed shard; yields the ids written."""

    def __init__(self, out: str, run: str):
        self.out, self.run = out, run

    def process(self, keyed):
        key, items = keyed
        items = sorted(items)  # deterministic record order
        writer = shards.ShardWriter(self.out, f"beam{self.run}_{key:04d}", shard_size=len(items) + 1)
        for asset_id, record in items:
            writer.add(asset_id, record)
        writer.close()
        yield from (asset_id for asset_id, _ in items)


def _append_failures(rows, out):
    with open(os.path.join(out, FAILURES), "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


def run(manifest: list[dict], out: str, cfg, *, num_shards: int = 16, beam_args: list[str] | None = None) -> dict:
    """Build the dataset with Beam; returns counts."""
    from data_pipeline.build import check_same_config
    from trellis_jax.atomic import atomic_write_text

    os.makedirs(out, exist_ok=True)
    check_same_config(out, cfg)
    atomic_write_text(os.path.join(out, "dataset.json"),
                      json.dumps({"schema_version": schema.SCHEMA_VERSION, "config": cfg.to_dict()}, indent=1))
    done, failed = shards.committed_ids(out), read_failures(out)
    todo = [e for e in manifest if e["id"] not in done and e["id"] not in failed]
    run_tag = time.strftime("%Y%m%d%H%M%S")
    t0 = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as p:
        results = (p | "Manifest" >> beam.Create(todo)
                   | "Process" >> beam.ParDo(ProcessAsset(cfg.to_dict(), num_shards)).with_outputs(ProcessAsset.FAILED,
                                                                                                  main="ok"))
        _ = results.ok | "ByShard" >> beam.GroupByKey() | "Write" >> beam.ParDo(WriteShard(out, run_tag))
        (results[ProcessAsset.FAILED] | "AllFailures" >> beam.combiners.ToList()
         | "WriteFailures" >> beam.Map(_append_failures, out))
    elapsed = time.perf_counter() - t0
    n_ok = sum(1 for e in todo if e["id"] in shards.committed_ids(out))
    summary = {"processed": n_ok, "failed": len(read_failures(out)) - len(failed), "seconds": elapsed}
    print(f"beam: {summary['processed']} written, {summary['failed']} failed in {elapsed:.1f}s "
          f"({60 * len(todo) / max(elapsed, 1e-9):.2f} assets/min)")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-shards", type=int, default=16)
    args, beam_args = p.parse_known_args(argv)
    cfg = config_lib.load_config(args.config, args.set)
    run(config_lib.read_manifest(args.manifest), args.out, cfg, num_shards=args.num_shards, beam_args=beam_args)


if __name__ == "__main__":
    main()
