"""The training loop: sharded jitted steps, EMA, adaptive clipping, orbax checkpoints, logging.

    task = build_task(cfg)
    init_fn, step_fn, shardings = compile_train(cfg, task, mesh, rules)
    state = init_fn(jax.random.PRNGKey(cfg.seed))          # TrainState placed with `shardings`
    frozen = frozen_inputs(task, mesh, rules)               # non-trained params (frozen condition / SLat encoder)
    state, metrics = step_fn(state, shard_batch(batch, mesh), frozen)
    run(cfg, workdir)                                       # the whole loop, resuming from workdir;
                                                            # ends by exporting the task's networks to workdir/ckpts

Step s (0-based) uses rng fold_in(state.rng, s) and the s-th batch of the data iterator; a step whose
loss or gradient is non-finite leaves the state unchanged and stops the run (`NonFiniteError`,
naming the step) after the last good checkpoint is safely on disk.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from trellis_jax.training import sharding as sh
from trellis_jax.training.optimizer import clip_stats, ema_update, lr_schedule, make_optimizer

__all__ = ["TrainState", "build_task", "make_optimizer", "compile_train", "frozen_inputs", "accumulated_grad", "abstract_like",
           "run", "NonFiniteError", "initial_params", "export_models"]


class NonFiniteError(FloatingPointError):
    """Loss or gradient became NaN/Inf."""


class TrainState(struct.PyTreeNode):
    step: jax.Array          # int32, number of updates applied
    params: Any              # float32 master weights (unboxed)
    opt_state: Any           # clip state (grad-norm ring buffer) + AdamW moments
    ema_params: Any          # EMA of params
    rng: jax.Array           # base PRNG key (uint32 [2]); step s uses fold_in(rng, s)


def build_task(cfg):
    """The Task of cfg.task ('ss_flow' | 'slat_flow' | 'ss_vae' | 'slat_vae' | 'rf_decoder' | 'mesh_decoder')."""
    from trellis_jax.training.tasks.mesh_decoder import MeshDecoderTask
    from trellis_jax.training.tasks.rf_decoder import RFDecoderTask
    from trellis_jax.training.tasks.slat_flow import SLatFlowTask
    from trellis_jax.training.tasks.slat_vae import SLatVAETask
    from trellis_jax.training.tasks.ss_flow import SSFlowTask
    from trellis_jax.training.tasks.ss_vae import SSVAETask

    tasks = {"ss_flow": SSFlowTask, "slat_flow": SLatFlowTask, "ss_vae": SSVAETask, "slat_vae": SLatVAETask,
             "rf_decoder": RFDecoderTask, "mesh_decoder": MeshDecoderTask}
    if cfg.task not in tasks:
        raise ValueError(f"config task must be one of {sorted(tasks)}, got {cfg.task!r}")
    return tasks[cfg.task](cfg)


def _init_keys(cfg, rng):
    """(parameter-init key, training key) of TrainState from the run's base key."""
    k_init, k_train = jax.random.split(rng)
    impl = cfg.get("init_rng_impl", "threefry2x32")
    if impl != "threefry2x32":  # e.g. 'rbg': one RngBitGenerator op per tensor, far faster to compile on CPU
        k_init = jax.random.wrap_key_data(jnp.concatenate([k_init, k_init[::-1] ^ jnp.uint32(0x9E3779B9)]), impl=impl)
    return k_init, k_train


def initial_params(cfg, task):
    """The unboxed parameters a run of cfg starts from at step 0 (as `compile_train`'s init_fn draws them
    from PRNGKey(cfg.seed)): e.g. to measure a model before training."""
    return nn.meta.unbox(task.init_params(_init_keys(cfg, jax.random.PRNGKey(int(cfg.seed)))[0]))


def export_models(cfg, task, state: TrainState, directory: str | Path) -> list[Path]:
    """Write task.export_models of the run's weights (cfg.export_params: 'ema', as the released
    checkpoints, or 'params') as official-format checkpoints DIRECTORY/NAME.{json,safetensors}.
    Returns the .json paths. Every process joins the gather; process 0 writes."""
    from trellis_jax.checkpoints import save_model

    which = cfg.get("export_params", "ema")
    if which not in ("ema", "params"):
        raise ValueError(f"config export_params must be 'ema' or 'params', got {which!r}")
    params = state.ema_params if which == "ema" else state.params
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    params = jax.device_get(params)
    if jax.process_index() != 0:
        return []
    return [save_model(Path(directory) / name, cls, args, p)[0] for name, (cls, args, p) in task.export_models(params).items()]


def accumulated_grad(loss_fn, batch_split: int, mesh):
    """value_and_grad of loss_fn(params, batch, rng) -> (loss, metrics), over `batch_split` micro-batches.

    batch_split = 1 is plain `jax.value_and_grad`. Otherwise (gradient accumulation, the reference's
    `batch_split`) every batch shard's rows are cut into batch_split equal micro-batches, spread over
    all shards like the batch, and a `lax.scan` sums their gradients (fp32, params' sharding): loss,
    metrics and gradients are the micro-batch means (the reference scales each micro-batch loss by
    1/batch_split); micro-batch j uses rng fold_in(rng, j). Live activations shrink batch_split-fold."""
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    if batch_split < 1:
        raise ValueError(f"config batch_split must be >= 1, got {batch_split}")
    if batch_split == 1:
        return vg
    shards = int(np.prod([mesh.shape[a] for a in sh.BATCH_AXES]))
    micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sh.BATCH_AXES))

    def split(x):  # [B, ...] -> [batch_split, B / batch_split, ...]; micro-batch j = rows j, j + n, j + 2n, ...
        if x.shape[0] % (shards * batch_split):
            raise ValueError(f"batch of {x.shape[0]} is not divisible by {shards} batch shards x batch_split {batch_split}")
        x = jnp.moveaxis(x.reshape((x.shape[0] // batch_split, batch_split) + x.shape[1:]), 1, 0)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def grad_fn(params, batch, rng):
        micro = jax.tree.map(split, batch)

        def one(acc, xs):
            j, mb = xs
            out, grads = vg(params, mb, jax.random.fold_in(rng, j))
            return jax.tree.map(lambda a, g: a + g.astype(jnp.float32) / batch_split, acc, (out, grads)), None

        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                             jax.eval_shape(vg, params, jax.tree.map(lambda x: x[0], micro), rng))
        (out, grads), _ = jax.lax.scan(one, zeros, (jnp.arange(batch_split), micro))
        return out, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    return grad_fn


def frozen_inputs(task, mesh, rules, abstract: bool = False):
    """The task's non-trained params (`task.frozen_params()`, e.g. a frozen condition or SLat encoder; {} when
    none) placed for the step: sharded by the rules table like the state (unannotated leaves are
    replicated). They are an argument of the step, never in the state, optimizer or checkpoint.
    `abstract`: ShapeDtypeStructs with those shardings (ahead-of-time lowering), nothing loaded."""
    shapes = task.frozen_shapes()
    shardings = sh.tree_shardings(shapes, mesh, rules)
    if abstract:
        return abstract_like(shardings, shapes)

    def place(s, x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(place, shardings, task.frozen_params())


def compile_train(cfg, task, mesh, rules):
    """(init_fn, step_fn, state_shardings) for `task` on `mesh` with logical-axis `rules`.

    init_fn(rng) -> TrainState (unboxed, placed with state_shardings); step_fn(state, batch, frozen) ->
    (state, metrics) jitted with explicit in/out shardings and the state donated; `frozen` is
    `frozen_inputs(task, mesh, rules)` (the loss's non-trained params, no gradient). metrics: loss,
    task metrics, grad_norm, clip_threshold, finite (1.0 / 0.0). cfg.batch_split (default 1)
    accumulates gradients over that many micro-batches (`accumulated_grad`)."""
    tx = make_optimizer(cfg)
    decay = float(cfg.ema.decay)

    def boxed_state(rng):
        k_init, k_train = _init_keys(cfg, rng)
        params = task.init_params(k_init)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema_params=params, rng=k_train)

    abstract = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
    state_shardings = sh.tree_shardings(abstract, mesh, rules)
    data_sharding = sh.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    init_fn = jax.jit(lambda rng: nn.meta.unbox(boxed_state(rng)), out_shardings=state_shardings)

    frozen_shardings = sh.tree_shardings(task.frozen_shapes(), mesh, rules)
    batch_split = int(cfg.get("batch_split", 1))
    if batch_split < 1:
        raise ValueError(f"config batch_split must be >= 1, got {batch_split}")

    def step(state: TrainState, batch, frozen):
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = accumulated_grad(lambda p, b, r: task.loss(p, b, r, frozen), batch_split, mesh)
        (loss, metrics), grads = grad_fn(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema_update(state.ema_params, params, decay))
        stats = clip_stats(opt_state)
        finite = jnp.isfinite(loss) & jnp.isfinite(stats["grad_norm"])
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        out = {"loss": loss, **metrics, **stats, "finite": finite.astype(jnp.float32)}
        return new, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)

    step_fn = jax.jit(step, in_shardings=(state_shardings, data_sharding, frozen_shardings),
                      out_shardings=(state_shardings, replicated), donate_argnums=0)
    return init_fn, step_fn, state_shardings


def abstract_like(shardings, state_shapes):
    """ShapeDtypeStructs of `state_shapes` carrying `shardings` (restore targets, ahead-of-time lowering)."""
    return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, state_shapes)


def check_run_config(cfg) -> None:
    """Run settings that would otherwise fail deep inside the loop (or look like a non-finite loss)."""
    for key, least in (("batch_size", 1), ("ckpt_every", 1), ("log_every", 1), ("keep_checkpoints", 1), ("total_steps", 0)):
        if int(cfg[key]) < least:
            raise ValueError(f"config {key} must be >= {least}, got {cfg[key]}")


def run(cfg, workdir: str | Path, log=print) -> dict:
    """Train cfg.total_steps steps in `workdir` (resuming from its latest checkpoint). Returns a summary.

    Holds `workdir/LOCK` (trellis_jax.workdir_lock) on process 0 for the whole run, so a
    second run on the same workdir stops at once with `WorkdirLockedError` naming the holder."""
    from trellis_jax.workdir_lock import WorkdirLock

    check_run_config(cfg)
    sh.maybe_initialize_distributed(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir, log).acquire() if jax.process_index() == 0 else None
    try:
        return _run(cfg, workdir, log)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, workdir: Path, log) -> dict:
    from trellis_jax.atomic import atomic_write_text
    from trellis_jax.training.checkpoint import Checkpointer
    from trellis_jax.training.data import make_batches
    from trellis_jax.training.logger import MetricsLogger

    mesh = sh.make_mesh(cfg.mesh)
    rules = sh.rules_from_config(cfg)
    task = build_task(cfg)
    if getattr(task, "cond", None) is not None:
        log(f"train: condition: {task.cond.description}")
    for note in getattr(task, "notes", ()):  # e.g. a randomly initialised frozen encoder
        log(f"train: {note}")
    init_fn, step_fn, shardings = compile_train(cfg, task, mesh, rules)
    frozen = frozen_inputs(task, mesh, rules)
    batches = make_batches(cfg, task)
    ckpt = Checkpointer(workdir / "checkpoints", keep=int(cfg.keep_checkpoints), async_save=bool(cfg.async_checkpoints))
    logger = MetricsLogger(workdir)
    schedule = lr_schedule(cfg)
    total = int(cfg.total_steps)
    try:
        start = ckpt.latest_step()
        if start is None:
            state = init_fn(jax.random.PRNGKey(int(cfg.seed)))
            start = 0
        else:
            shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
            state, data_state = ckpt.restore(start, abstract_like(shardings, shapes))
            batches.set_state(data_state)
            log(f"train: resumed from {ckpt.path(start)} (step {start})")
        if jax.process_index() == 0:  # only once the resume is accepted: a rejected one keeps the old config.json
            atomic_write_text(workdir / "config.json", cfg.to_json_best_effort(indent=1))
        if start >= total:
            exported = export_models(cfg, task, state, workdir / "ckpts")  # (again: a run killed before its export)
            log(f"train: already at step {start} >= total_steps {total}; nothing to train, models exported again")
            return {"start": start, "end": start, "losses": {}, "models": exported}
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        log(f"train: task {cfg.task}, {n_params:,} params, mesh {dict(mesh.shape)}, batch {cfg.batch_size}, "
            f"steps {start}..{total - 1}, workdir {workdir}")

        host_batch = next(batches)
        batch = sh.shard_batch(host_batch, mesh)
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch, frozen).compile()
        compile_s = time.perf_counter() - t0
        logger.scalars(start, {"compile_seconds": compile_s}, prefix="perf")
        log(f"train: step compiled in {compile_s:.1f}s")

        losses: dict[int, float] = {}
        window = {"t": time.perf_counter(), "steps": 0, "tokens": 0}

        def finish(s: int, metrics, tokens: int) -> None:
            """Host side of step s (blocks on its metrics): NaN check, per-step record, periodic scalars."""
            m = jax.device_get(metrics)
            if not m["finite"]:
                ckpt.wait()
                good = ckpt.latest_step()
                raise NonFiniteError(
                    f"non-finite {'loss' if not np.isfinite(m['loss']) else 'gradient'} at step {s} "
                    f"(loss={m['loss']}, grad_norm={m['grad_norm']}); stopped, its update was not applied. Last good "
                    f"checkpoint: {ckpt.path(good) if good is not None else 'none (no checkpoint written yet)'}")
            m.pop("finite")
            losses[s] = float(m["loss"])
            logger.record(s, m)
            window["steps"] += 1
            window["tokens"] += tokens
            if (s + 1) % int(cfg.log_every) == 0 or s + 1 == total:
                dt = max(time.perf_counter() - window["t"], 1e-9)
                logger.scalars(s, {**m, "lr": float(schedule(s))})
                logger.scalars(s, {"steps_per_sec": window["steps"] / dt, "tokens_per_sec": window["tokens"] / dt}, prefix="perf")
                logger.flush()
                window.update(t=time.perf_counter(), steps=0, tokens=0)

        # One step stays in flight: step s is dispatched before step s-1's metrics are read, so the next
        # batch is prepared while the device computes. Before a checkpoint the step is finished first
        # (the saved state must be known finite; the state buffers are donated to the next step).
        pending = None
        last_saved = start
        for s in range(start, total):
            if s > start:
                host_batch = next(batches)
                batch = sh.shard_batch(host_batch, mesh)
            tokens = task.tokens_per_batch(host_batch) * jax.process_count()
            state, metrics = compiled(state, batch, frozen)
            if pending is not None:
                finish(*pending)
            pending = (s, metrics, tokens)
            if (s + 1) % int(cfg.ckpt_every) == 0 or s + 1 == total:
                finish(*pending)
                pending = None
                ckpt.save(s + 1, state, batches.get_state())
                last_saved = s + 1
        ckpt.wait()
        exported = export_models(cfg, task, state, workdir / "ckpts")
        log(f"train: done, {total - start} steps; loss {losses[start]:.5f} -> {losses[total - 1]:.5f}; "
            f"checkpoint {ckpt.path(last_saved)}" + (f"; models {', '.join(str(p) for p in exported)}" if exported else ""))
        return {"start": start, "end": total, "losses": losses, "compile_seconds": compile_s, "models": exported}
    finally:
        logger.close()
        ckpt.close()
