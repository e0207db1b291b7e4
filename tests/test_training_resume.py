"""Checkpoint/resume of the trainer: a run killed with SIGKILL after a checkpoint and resumed logs the
same per-step losses as an uninterrupted run (ss_flow, and the rf_decoder / mesh_decoder tasks); a corrupt checkpoint is a clear error naming its path
(nothing deleted); a non-finite loss stops the run naming the step and keeps the last good checkpoint.

Training runs are subprocesses of `python -m trellis_jax.train` sharing a persistent compilation cache."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.training.checkpoint import CheckpointError, Checkpointer
from trellis_jax.training.logger import read_step_losses

REPO = Path(__file__).resolve().parents[1]
TOTAL, EVERY = 40, 10
ARGS = ["--config", "experiments/train/ss_flow.py:tiny", "--config.model.args.model_channels=32",
        "--config.model.args.num_blocks=1", f"--config.total_steps={TOTAL}", f"--config.ckpt_every={EVERY}"]
# task -> (arguments, total steps, checkpoint interval); the decoder tasks render, so fewer, smaller steps
# (mesh_decoder compiles for minutes on a CPU: slow)
RUNS = {
    "ss_flow": (ARGS, TOTAL, EVERY),
    "slat_vae": (["--config", "experiments/train/slat_vae.py:tiny", "--config.model.encoder.args.model_channels=32",
                  "--config.model.decoder.args.model_channels=32", "--config.model.encoder.args.num_blocks=1",
                  "--config.model.decoder.args.num_blocks=1", "--config.data.capacity=96", "--config.data.render_size=16",
                  "--config.init_rng_impl=rbg", f"--config.total_steps={TOTAL}", f"--config.ckpt_every={EVERY}"], TOTAL, EVERY),
    "rf_decoder": (["--config", "experiments/train/rf_decoder.py:tiny", "--config.data.capacity=64",
                    "--config.render.image_size=16", "--config.total_steps=10", "--config.ckpt_every=3"], 10, 3),
    "mesh_decoder": (["--config", "experiments/train/mesh_decoder.py:tiny", "--config.data.capacity=32",
                      "--config.render.image_size=16", "--config.total_steps=10", "--config.ckpt_every=3"], 10, 3),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's run
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""))
    return e


def _train(workdir, env, *extra, args=ARGS, **kw):
    cmd = [sys.executable, "-m", "trellis_jax.train", *args, "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


# slat_vae / mesh_decoder: compiles of minutes under subprocesses on 2 CPU cores -> slow
@pytest.fixture(scope="module", params=["ss_flow", "rf_decoder", pytest.param("slat_vae", marks=pytest.mark.slow),
                                                  pytest.param("mesh_decoder", marks=pytest.mark.slow)])
def reference(request, tmp_path_factory, env):
    name = request.param
    args, total, every = RUNS[name]
    wd = tmp_path_factory.mktemp(f"uninterrupted_{name}")
    res = _train(wd, env, args=args)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = read_step_losses(wd)
    assert sorted(losses) == list(range(total))
    return name, wd, losses


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, env, reference):
    name, ref_dir, ref_losses = reference
    args, total, every = RUNS[name]
    wd = tmp_path / "run"
    cmd = [sys.executable, "-m", "trellis_jax.train", *args, "--workdir", str(wd)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            done = read_step_losses(wd) if (wd / "metrics.jsonl").exists() else {}
            if (wd / "checkpoints" / str(every)).is_dir() and done and max(done) >= every + 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"run was not killed mid-way:\n{proc.stdout.read()[-3000:]}"
    killed_at = max(read_step_losses(wd))
    assert every + 3 <= killed_at < total - 1

    res = _train(wd, env, args=args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    resumed = read_step_losses(wd)
    assert sorted(resumed) == list(range(total))
    assert resumed == ref_losses  # bit-identical per-step losses
    # ... and the exported models (official checkpoints of the final weights) are byte-identical
    exported = sorted(p.name for p in (ref_dir / "ckpts").iterdir())
    assert exported and exported == sorted(p.name for p in (wd / "ckpts").iterdir())
    for fname in exported:
        assert (wd / "ckpts" / fname).read_bytes() == (ref_dir / "ckpts" / fname).read_bytes(), fname


@pytest.mark.parametrize("every", [1, 3])
def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, env, every):
    """lr 1e30: step 0 is finite, its update blows the weights up, step 1's loss is not finite. With
    ckpt_every=3 the step is detected one step late (one step in flight) and no checkpoint exists yet."""
    wd = tmp_path / "nan"
    res = _train(wd, env, "--config.optimizer.lr=1e30", f"--config.ckpt_every={every}", "--config.total_steps=6")
    assert res.returncode == 1
    msg = res.stderr
    assert "non-finite" in msg and "at step" in msg, msg[-3000:]
    step = int(msg.split("at step ")[1].split()[0])
    assert step == 1
    if every == 3:
        assert "Last good checkpoint: none" in msg and not (wd / "checkpoints" / "3").exists()
        return
    last = wd / "checkpoints" / str(step)
    assert f"Last good checkpoint: {last}" in msg
    assert not (wd / "checkpoints" / str(step + 1)).exists()
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(last / "state")
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored["params"]))


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path):
    state = {"w": jnp.arange(1000, dtype=jnp.float32), "step": jnp.int32(3)}
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    ck.save(1, state, {"kind": "synthetic", "step": 1})
    ck.save(2, state, {"kind": "synthetic", "step": 2})
    ck.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, data = ck.restore(2, abstract)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert data == {"kind": "synthetic", "step": 2}
    for f in (tmp_path / "ck" / "2" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = sorted(str(p) for p in (tmp_path / "ck").rglob("*"))
    with pytest.raises(CheckpointError, match=str(tmp_path / "ck" / "2")):
        ck.restore(2, abstract)
    assert sorted(str(p) for p in (tmp_path / "ck").rglob("*")) == before
    restored, _ = ck.restore(1, abstract)  # the earlier checkpoint is intact
    np.testing.assert_array_equal(restored["w"], state["w"])
    ck.close()
