"""The one timing loop of the benchmark scripts: a first call (compile + warm-up), then `runs` timed
calls, each blocked until its result is ready.

Scripts import it as `from timing import time_calls` (they run as `python benchmarks/NAME.py`, so
this folder is first on sys.path).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of the first call, and median / minimum (wall and process-CPU) of the timed calls.
    The minimum is the robust figure on a shared machine (other jobs only ever add time); CPU seconds
    count this process's work on all cores and barely move under contention."""

    first_s: float
    median_s: float
    min_s: float
    min_cpu_s: float
    result: Any  # the last call's output


def time_calls(call: Callable[[int], Any], runs: int) -> Timing:
    """call(i) for i = 0 (first call) .. runs; `i` lets a call vary its inputs (e.g. seeds)."""
    t0 = time.perf_counter()
    result = jax.block_until_ready(call(0))
    first = time.perf_counter() - t0
    wall, cpu = [], []
    for i in range(1, runs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        result = jax.block_until_ready(call(i))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(first, statistics.median(wall), min(wall), min(cpu), result)
