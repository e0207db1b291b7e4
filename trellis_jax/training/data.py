"""Resumable batch iterators for the trainer: synthetic (state = step index) or grain (iterator state).

    it = make_batches(cfg, task)      # yields host-local dicts of numpy arrays (this process's slice)
    batch = next(it); state = it.get_state(); it.set_state(state)   # state: JSON-serialisable dict

Synthetic batches are a pure function of (seed, step, process index), so a resumed run sees exactly
the batches an uninterrupted one would. Grain iterators save grain's own iterator state.
"""
from __future__ import annotations

import json

import jax
import numpy as np


class SyntheticBatches:
    """Batch `step` = task.synthetic_batch(local_batch, seed (seed, step, process))."""

    def __init__(self, task, local_batch: int, seed: int):
        self.task, self.local_batch, self.seed, self.step = task, local_batch, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.SeedSequence([self.seed, self.step, jax.process_index()]).generate_state(2)
        self.step += 1
        return self.task.synthetic_batch(self.local_batch, int(rng[0]) << 32 | int(rng[1]))

    def get_state(self) -> dict:
        return {"kind": "synthetic", "step": self.step}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "synthetic":
            raise ValueError(f"checkpointed data state is {state.get('kind')!r}, the config asks for synthetic data")
        self.step = int(state["step"])


class GrainBatches:
    """A grain DataLoader iterator, each batch passed through task.prepare (host-side conversion only;
    a frozen condition encoder runs inside the train step)."""

    def __init__(self, task, local_batch: int, seed: int):
        self.task = task
        self._it = iter(task.grain_loader(local_batch, seed))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.task.prepare(next(self._it))

    def get_state(self) -> dict:
        s = self._it.get_state()
        return {"kind": "grain", "state": s.decode() if isinstance(s, bytes) else json.dumps(s)}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "grain":
            raise ValueError(f"checkpointed data state is {state.get('kind')!r}, the config asks for grain data")
        s = state["state"]
        try:
            self._it.set_state(s.encode())
        except TypeError:
            self._it.set_state(json.loads(s))


def make_batches(cfg, task):
    """Host-local iterator for cfg.data.kind ('synthetic' | 'grain'); global batch cfg.batch_size."""
    n = jax.process_count()
    if cfg.batch_size % n:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {n} processes")
    local = cfg.batch_size // n
    if cfg.data.kind == "synthetic":
        return SyntheticBatches(task, local, int(cfg.seed))
    if cfg.data.kind == "grain":
        return GrainBatches(task, local, int(cfg.seed))
    raise ValueError(f"config data.kind must be 'synthetic' or 'grain', got {cfg.data.kind!r}")
