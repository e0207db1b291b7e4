"""Ahead-of-time compilation of a job for a TPU topology from any host (`trellis-jax aot`).

    trellis-jax aot --config experiments/train/slat_flow.py:img_L --topology v5p:4x4x4 [--config.k=v ...]
    trellis-jax aot --config experiments/sample/pipeline.py:img_L --topology v5e:1x1 [--job sample]

Builds the job's real jitted function — the trainer's step (`compile_train`: its shardings, donation,
optimizer) or the composed sampler's jitted call — over abstract inputs only (ShapeDtypeStructs with
NamedShardings on a Mesh of the topology's devices; nothing is allocated), compiles it with the TPU
compiler of the `libtpu` wheel, and prints per-chip memory (arguments, outputs, aliased, temp, code)
against the chip's HBM, FLOPs per step, and the compiler's estimated step time with the MFU it
implies against the chip's bf16 peak. Figures are compiler estimates, never measurements.

FLOPs and time: XLA's cost model counts each while-loop body once (chunked attention, micro-batches
and the sampler's Euler steps are loops), so FLOPs are counted on the jaxpr with trip counts
(`trellis_jax.tools.jaxpr_flops`) and the compiler's `optimal_seconds` is scaled by the same
count's loop factor (trip-counted / once-counted FLOPs). Conditionals count their costliest branch,
so an extent-limited attention or the sampler's stage-2 size switch is estimated at full capacity.

Training jobs with an image / text condition include the frozen DINOv2 / CLIP encoder of cfg.cond.arch
as the trainer runs it, inside the step; its params enter as abstract arguments (the architecture's
shapes; no weights are read), so the memory and FLOPs figures count the encoder.
Last line: `aot: job=<name> topology=<t> chips=<n> hbm_frac=<x> est_step_s=<y> est_mfu=<z>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# chip -> (HBM GiB, dense bf16 TFLOP/s), per chip
CHIPS: dict[str, tuple[float, float]] = {
    "v4": (32.0, 275.0),
    "v5e": (16.0, 197.0),
    "v5p": (95.0, 459.0),
    "v6e": (32.0, 918.0),
}
INSTALL = 'pip install -e ".[tpu]"'
# libtpu reads these at load; on a host without TPUs it otherwise warns about each one. Compiling
# touches no TPU, so several processes (parallel tests, one aot per topology) may load it at once.
_QUIET_LIBTPU = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "localhost",
                 "TPU_ACCELERATOR_TYPE": "v5p-8", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
GIB = 2.0**30


class AOTError(Exception):
    """Bad input or an environment that cannot compile: one line for the user."""


@dataclasses.dataclass
class Job:
    name: str
    kind: str                  # 'train' | 'sample'
    fn: Any                    # the jitted function
    args: tuple                # abstract arguments
    lines: list[str]           # what was built (mesh, batch, dtypes)
    out_shardings: Any = None  # what the rules table says the outputs are (train: the state)


# -------------------------------------------------------------------------------------------- topology


def chip_of(topology: str) -> str:
    chip = topology.split(":")[0].split("-")[0]
    if chip not in CHIPS:
        raise AOTError(f"topology {topology!r}: unknown chip {chip!r}; known: {sorted(CHIPS)} (e.g. v5p:4x4x4, v5e:16x16)")
    return chip


def topology_devices(topology: str) -> list:
    """The compile-only devices of a TPU slice such as 'v5p:4x4x4' (needs the libtpu wheel, no TPU)."""
    chip_of(topology)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise AOTError(f"libtpu is not installed (it holds the TPU compiler); install it with: {INSTALL}") from None
    for k, v in _QUIET_LIBTPU.items():
        os.environ.setdefault(k, v)
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # the plugin's errors are runtime errors with multi-line text
        raise AOTError(f"topology {topology!r}: {str(e).strip().splitlines()[0]}") from None


def chips_and_per_device(topology: str, devices: list) -> tuple[int, float, float]:
    """(chips, HBM bytes per device, bf16 FLOP/s per device): v4 slices list one device per core."""
    hbm_gib, tflops = CHIPS[chip_of(topology)]
    chips = len({(tuple(getattr(d, "coords", (i,))), getattr(d, "slice_index", 0)) for i, d in enumerate(devices)})
    per_chip = len(devices) / chips
    return chips, hbm_gib * GIB / per_chip, tflops * 1e12 / per_chip


# -------------------------------------------------------------------------------------------- jobs


def _dtype(name: str, field: str):
    import jax.numpy as jnp

    if name not in ("float32", "bfloat16"):
        raise AOTError(f"config {field} must be 'float32' or 'bfloat16', got {name!r}")
    return getattr(jnp, name)


def train_job(cfg, devices, name: str) -> Job:
    """The trainer's jitted step on abstract state and batch, sharded on a mesh of `devices`."""
    import jax

    from trellis_jax.training import sharding as sh
    from trellis_jax.training.trainer import abstract_like, build_task, compile_train, frozen_inputs

    cfg = cfg.copy_and_resolve_references()
    lines = []
    cond = cfg.get("cond")
    if cond is not None and cond.kind in ("image", "text"):
        lines.append(f"condition: frozen {cond.arch} {cond.kind} encoder inside the step (abstract weights, stop_gradient)")
    try:
        mesh = sh.make_mesh(cfg.mesh, devices)
        rules = sh.rules_from_config(cfg)
    except ValueError as e:
        raise AOTError(f"mesh: {e}") from None
    task = build_task(cfg)
    init_fn, step_fn, shardings = compile_train(cfg, task, mesh, rules)
    shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    state = abstract_like(shardings, shapes)
    frozen = frozen_inputs(task, mesh, rules, abstract=True)
    B = int(cfg.batch_size)
    shards = math.prod(mesh.shape[a] for a in sh.BATCH_AXES)
    if B % shards:
        raise AOTError(f"batch_size {B} is not divisible by data x fsdp = {shards} batch shards")
    example = task.synthetic_batch(1, 0)
    bs = sh.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((B,) + v.shape[1:], v.dtype, sharding=bs) for k, v in example.items()}
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes.params))
    lines.insert(0, f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} tensor={mesh.shape['tensor']}; "
                    f"global batch {B} ({B // shards} per batch shard), batch_split {int(cfg.get('batch_split', 1))}; "
                    f"compute {cfg.get('compute_dtype', 'float32')}, params float32 masters; {n_params:,} params")
    lines.insert(1, "batch: " + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items()))
    return Job(name, "train", step_fn, (state, batch, frozen), lines, out_shardings=shardings)


def sample_job(cfg, devices, name: str) -> Job:
    """The composed sampler's jitted call on abstract weights, conditions and seeds; the batch is
    split over all devices when it divides, weights replicated."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from trellis_jax.models.registry import dummy_inputs
    from trellis_jax.sampling.random_pipeline import pipeline_from_config

    wdt = _dtype(cfg.weights_dtype, "weights_dtype")
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())

    def abstract_params(role, module):
        shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), *dummy_inputs(module))))
        cast = lambda x: wdt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, cast(x), sharding=replicated), shapes)

    pipe = pipeline_from_config(cfg, abstract_params)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(pipe.params()))
    B = int(cfg.batch_size)
    batched = NamedSharding(mesh, P("data")) if B % len(devices) == 0 else replicated
    flow = pipe.models["sparse_structure_flow_model"][0]
    cond = jax.ShapeDtypeStruct((B, int(cfg.cond.tokens), flow.cond_channels), jnp.float32, sharding=batched)
    seeds = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=batched)
    lines = [f"batch {B}, capacity {pipe.capacity} voxels, formats {list(pipe.formats)}, stage-2 sizes {list(pipe.stage2_sizes())} "
             f"(estimated at the largest); {pipe.ss_sampler.steps}+{pipe.slat_sampler.steps} Euler steps, CFG {pipe.ss_sampler.cfg_strength}",
             f"weights {cfg.weights_dtype}, compute {cfg.compute_dtype}; {n_params:,} params; condition tokens {list(cond.shape)}"]
    return Job(name, "sample", pipe.jitted, (pipe.params(), cond, cond, seeds, None, None, False), lines)


def build_job(cfg, devices, name: str, job: str | None) -> Job:
    kind = "sample" if cfg.get("job") == "sample" else "train" if cfg.get("task") else None
    if kind is None:
        raise AOTError("the config is neither a training config (it has no `task`) nor a sampling config (job='sample')")
    if job is not None and job != kind:
        raise AOTError(f"--job {job} but the config is a {kind} config (experiments/train/*.py train, experiments/sample/*.py sample)")
    return (train_job if kind == "train" else sample_job)(cfg, devices, name)


# -------------------------------------------------------------------------------------------- compile + report


@dataclasses.dataclass
class Report:
    name: str
    topology: str
    chips: int
    memory: dict            # per device bytes: argument, output, alias, temp, code, total, peak
    hbm_bytes: float        # per device
    hbm_frac: float
    flops: float            # per step, all devices (jaxpr count with trip counts)
    flops_xla: float        # per device, XLA's count (loop bodies once)
    optimal_seconds: float  # XLA's roofline estimate (loop bodies once)
    loop_factor: float
    est_step_s: float
    est_mfu: float
    compile_s: float
    compiled: Any = None
    oom: str = ""

    def figure_line(self) -> str:
        return (f"aot: job={self.name} topology={self.topology} chips={self.chips} hbm_frac={self.hbm_frac:.3f} "
                f"est_step_s={self.est_step_s:.4g} est_mfu={self.est_mfu:.3f}")


# e.g. "the total memory required for HLO temporaries (312.71G) exceeds available HBM (95.73G)"
_OOM = re.compile(r"(?:Used |\()([\d.]+)([KMGT])\)? (?:of|exceeds available HBM \()")


def _oom_bytes(message: str) -> float | None:
    """Bytes the compiler said it needed (a lower bound when it names only the temporaries)."""
    m = _OOM.search(message)
    if not m:
        return None
    unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return float(m.group(1)) * unit[m.group(2)]


def step_estimate(optimal_seconds: float, loop_factor: float, flops_per_device: float, peak: float) -> tuple[float, float]:
    """(est. step s, est. MFU) from XLA's roofline `optimal_seconds` (loop bodies once) scaled by the loop
    factor. XLA reports a non-positive value when its cost model has no estimate for the program (seen on
    the released sampler: -161.5 s); that is 'no estimate' (nan), never a negative time."""
    if not optimal_seconds > 0:
        return float("nan"), float("nan")
    est = optimal_seconds * loop_factor
    return est, flops_per_device / est / peak


def compile_report(job: Job, topology: str, devices: list) -> Report:
    """Trace, lower and compile `job` for the topology; memory, FLOPs, estimated time."""
    from trellis_jax.tools.jaxpr_flops import count_flops

    chips, hbm, peak = chips_and_per_device(topology, devices)
    t0 = time.perf_counter()
    traced = job.fn.trace(*job.args)
    counts = count_flops(traced.jaxpr)
    n = len(devices)
    try:
        compiled = traced.lower().compile()
    except Exception as e:  # the TPU compiler refuses programs that exceed HBM
        text = str(e)
        used = _oom_bytes(text)
        if used is None and "RESOURCE_EXHAUSTED" not in text:
            raise
        used = float("nan") if used is None else used
        first = next((ln.strip() for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln or "hbm" in ln), text.strip().splitlines()[0])
        return Report(job.name, topology, chips, {"total": used}, hbm, used / hbm, counts.flops, float("nan"), float("nan"),
                      counts.loop_factor, float("nan"), float("nan"), time.perf_counter() - t0, oom=first[:400])
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    mem = {k: float(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp", "generated_code")}
    mem["code"] = mem.pop("generated_code")
    mem["total"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["code"]
    mem["peak"] = float(getattr(m, "peak_memory_in_bytes", 0) or 0)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    opt = float(cost.get("optimal_seconds", float("nan")))
    est, mfu = step_estimate(opt, counts.loop_factor, counts.flops / n, peak)
    return Report(job.name, topology, chips, mem, hbm, max(mem["total"], mem["peak"]) / hbm, counts.flops,
                  float(cost.get("flops", float("nan"))), opt, counts.loop_factor, est, mfu, compile_s, compiled)


def format_report(job: Job, r: Report) -> list[str]:
    hbm_gib, tflops = CHIPS[chip_of(r.topology)]
    out = [f"aot: {job.kind} job {job.name} on {r.topology}: {r.chips} chips of {hbm_gib:g} GiB HBM, "
           f"{tflops:g} TFLOP/s bf16 peak each"]
    out += [f"aot: {line}" for line in job.lines]
    out.append(f"aot: traced + compiled in {r.compile_s:.1f} s")
    g = lambda b: f"{b / GIB:10.3f}"
    if r.oom:
        out.append(f"aot: DOES NOT FIT: the TPU compiler needs at least {r.memory['total'] / GIB:.2f} GiB per chip of "
                   f"{r.hbm_bytes / GIB:.1f} GiB ({r.oom})")
    else:
        m = r.memory
        out += ["per-chip memory        GiB",
                f"  arguments      {g(m['argument'])}",
                f"  outputs        {g(m['output'])}",
                f"  aliased        {g(-m['alias'])}   (donated inputs reused as outputs)",
                f"  temp           {g(m['temp'])}",
                f"  code           {g(m['code'])}",
                f"  total          {g(m['total'])}   of {r.hbm_bytes / GIB:g} GiB HBM (compiler peak {m['peak'] / GIB:.3f} GiB); "
                f"hbm_frac {r.hbm_frac:.3f}"]
    out.append(f"FLOPs per step         {r.flops:.4g} total, {r.flops / r.chips:.4g} per chip (matmul + conv, loops x trip "
               f"counts; XLA's per-chip count, loop bodies once: {r.flops_xla:.4g})")
    if not r.oom and math.isnan(r.est_step_s):
        out.append(f"compiler estimate      none: XLA's optimal_seconds is {r.optimal_seconds:.4g} s (its cost model has no "
                   f"estimate for this program); est_step_s and est_mfu are nan")
    elif not r.oom:
        out.append(f"compiler estimate      step {r.est_step_s:.4g} s (XLA optimal_seconds {r.optimal_seconds:.4g} s x loop "
                   f"factor {r.loop_factor:.4g}); MFU {r.est_mfu:.3f} of the bf16 peak  [compiler estimate, not measured]")
    out.append(r.figure_line())
    return out


# -------------------------------------------------------------------------------------------- CLI


def parse_args(argv):
    from trellis_jax.config_loader import split_config_overrides

    ap = argparse.ArgumentParser(prog="trellis-jax aot", description=__doc__.splitlines()[0],
                                 epilog=f"Needs the TPU compiler: {INSTALL}. Any config key can be overridden: "
                                        "--config.batch_size=256 --config.mesh.fsdp=-1.")
    ap.add_argument("--config", required=True, help="experiments/train/<file>.py:<variant> or experiments/sample/pipeline.py:<variant>")
    ap.add_argument("--topology", required=True, help="TPU slice, e.g. v5p:4x4x4, v5e:16x16, v5e:1x1, v6e:1x1")
    ap.add_argument("--job", choices=("train", "sample"), help="checked against the config's kind")
    args, rest = ap.parse_known_args(argv)
    return args, split_config_overrides(rest, ap.error)


def job_name(spec: str) -> str:
    path, _, variant = spec.partition(":")
    return f"{Path(path).stem}:{variant}" if variant else Path(path).stem


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # only the compiler is TPU's; runs the same on a TPU host
    from trellis_jax.config_loader import load_config

    try:
        cfg = load_config(args.config, overrides)
        devices = topology_devices(args.topology)
        job = build_job(cfg, devices, job_name(args.config), args.job)
        report = compile_report(job, args.topology, devices)
    except (AOTError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"aot: error: {msg}", file=sys.stderr, flush=True)
        return 2
    print("\n".join(format_report(job, report)), flush=True)
    return 1 if report.oom else 0


if __name__ == "__main__":
    sys.exit(main())
