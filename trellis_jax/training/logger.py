"""Training metrics: TensorBoard scalars (tensorboardX) and a per-step JSONL record in the workdir.

TensorBoard tags: train/loss, train/<metric>, train/grad_norm, train/clip_threshold, train/lr,
perf/steps_per_sec, perf/tokens_per_sec, perf/compile_seconds (once). `metrics.jsonl` holds every
step's loss (appended across resumes; a re-run step's later line wins) — what tests compare.
Only process 0 writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax


class MetricsLogger:
    def __init__(self, workdir: str | Path):
        self.active = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
        if self.active:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tb"))
            self._jsonl = open(self.workdir / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict, prefix: str = "train") -> None:
        if self.active:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def record(self, step: int, values: dict) -> None:
        if self.active:
            self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def flush(self) -> None:
        if self.active:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._jsonl.close()


def read_step_losses(workdir: str | Path) -> dict[int, float]:
    """{step: loss} from metrics.jsonl (a step logged twice, e.g. re-run after a resume, keeps the last)."""
    out = {}
    for line in Path(workdir, "metrics.jsonl").read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            out[int(rec["step"])] = float(rec["loss"])
    return out
