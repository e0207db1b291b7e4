"""Bad inputs and shared directories for `train` and `build-data` (through the CLI, in-process where
possible), the workdir lock (a subprocess holds it), the atomic-output helper and the demo's
prompt -> folder pairing. Every case stops before a training step is compiled."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from trellis_jax import cli

TINY = "experiments/train/ss_vae.py:tiny"


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if "error" in l]
    return rc, (lines[0] if len(lines) == 1 else err)


# ---------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("override, expect", [
    ("--config.ckpt_every=0", "ckpt_every must be >= 1"),
    ("--config.batch_size=0", "batch_size must be >= 1"),
    ("--config.log_every=-1", "log_every must be >= 1"),
])
def test_train_bad_run_settings(tmp_path, capsys, override, expect):
    rc, line = run_cli(capsys, "train", "--config", TINY, "--workdir", tmp_path / "w", override)
    assert rc == 2 and expect in line
    assert not (tmp_path / "w" / "config.json").exists()


def test_train_workdir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    rc, line = run_cli(capsys, "train", "--config", TINY, "--workdir", tmp_path / "file" / "w")
    assert rc == 1 and "cannot write to the workdir" in line and str(tmp_path / "file") in line


def test_train_refuses_a_dataset_of_another_voxel_resolution(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"schema_version": 1, "config": {"voxel_resolution": 64}}))
    rc, line = run_cli(capsys, "train", "--config", TINY, "--workdir", tmp_path / "w", "--config.data.kind=grain",
                       f"--config.data.path={data}", "--config.data.worker_count=0")
    assert rc == 2 and str(data / "dataset.json") in line and "voxel_resolution 64" in line and "32^3" in line


def test_rejected_resume_keeps_config_json_and_releases_the_lock(tmp_path, capsys):
    from trellis_jax.training.checkpoint import Checkpointer

    w = tmp_path / "w"
    ck = Checkpointer(w / "checkpoints", keep=1, async_save=False)
    ck.save(1, {"not": np.zeros(3, np.float32)}, {"kind": "synthetic", "step": 1})  # another model's checkpoint
    ck.close()
    (w / "config.json").write_text("the config of the run that wrote the checkpoint")
    rc, line = run_cli(capsys, "train", "--config", TINY, "--workdir", w)
    assert rc == 1 and "cannot restore the checkpoint" in line and str(w / "checkpoints" / "1") in line
    assert (w / "config.json").read_text() == "the config of the run that wrote the checkpoint"
    assert not (w / "LOCK").exists()


@pytest.fixture
def live_process():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_second_train_on_a_locked_workdir_stops_naming_the_holder(tmp_path, capsys, live_process):
    from trellis_jax.workdir_lock import _proc_start_ticks

    w = tmp_path / "w"
    w.mkdir()
    holder = {"host": socket.gethostname(), "pid": live_process.pid, "start_ticks": _proc_start_ticks(live_process.pid),
              "started": "earlier"}
    (w / "LOCK").write_text(json.dumps(holder))
    (w / "config.json").write_text("theirs")
    rc, line = run_cli(capsys, "train", "--config", TINY, "--workdir", w)
    assert rc == 1 and f"pid {live_process.pid}" in line and socket.gethostname() in line and str(w / "LOCK") in line
    assert (w / "config.json").read_text() == "theirs" and json.loads((w / "LOCK").read_text()) == holder
    assert not (w / "metrics.jsonl").exists()


def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path, live_process):
    from trellis_jax import workdir_lock as wl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / "LOCK"
    logs = []
    # a dead pid on this host: taken over, with a message
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start_ticks": None}))
    lock = wl.WorkdirLock(tmp_path, logs.append).acquire()
    assert json.loads(lock_path.read_text())["pid"] == os.getpid() and "stale" in logs[0]
    lock.release()
    assert not lock_path.exists()
    # another host, refreshed recently: live; not refreshed for > STALE_AFTER_S: stale
    lock_path.write_text(json.dumps({"host": "other-host", "pid": 1, "start_ticks": None}))
    with pytest.raises(wl.WorkdirLockedError, match="pid 1 on host other-host"):
        wl.WorkdirLock(tmp_path).acquire()
    old = time.time() - wl.STALE_AFTER_S - 10
    os.utime(lock_path, (old, old))
    wl.WorkdirLock(tmp_path, logs.append).acquire().release()
    # a pid reused by a later process (start time differs): stale
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": live_process.pid, "start_ticks": 1}))
    wl.WorkdirLock(tmp_path, logs.append).acquire().release()


def test_of_two_simultaneous_lockers_exactly_one_wins(tmp_path):
    from trellis_jax import workdir_lock as wl

    results, barrier = [], threading.Barrier(8)

    def attempt():
        barrier.wait()
        try:
            results.append(wl.WorkdirLock(tmp_path).acquire())
        except wl.WorkdirLockedError:
            results.append(None)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


# ---------------------------------------------------------------------------------------- build-data
def test_build_data_manifest_and_config_errors_name_the_file(tmp_path, capsys):
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "none.json", "--out", tmp_path / "o")
    assert rc == 2 and str(tmp_path / "none.json") in line and "not found" in line
    (tmp_path / "bad.json").write_text("{")
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "bad.json", "--out", tmp_path / "o")
    assert rc == 2 and str(tmp_path / "bad.json") in line and "invalid JSON" in line
    (tmp_path / "m.json").write_text("[]")
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "m.json", "--out", tmp_path / "o", "--set", "voxel_res=32")
    assert rc == 2 and "unknown config key 'voxel_res'" in line


def test_encode_data_missing_encoder_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    rc, line = run_cli(capsys, "encode-data", "--in", tmp_path, "--out", tmp_path / "o", "--ss-encoder", tmp_path / "nope",
                       "--slat-encoder", tmp_path / "nope2")
    assert rc == 2 and f"{tmp_path / 'nope'}.json: file not found" in line


def test_build_data_restart_with_another_config_is_refused(tmp_path, capsys):
    (tmp_path / "m.json").write_text("[]")
    out = tmp_path / "ds"
    assert cli.main(["build-data", "--manifest", str(tmp_path / "m.json"), "--out", str(out), "--no-progress"]) == 0
    before = (out / "dataset.json").read_bytes()
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "m.json", "--out", out, "--no-progress",
                       "--set", "voxel_resolution=32", "--set", "batch_views=2")
    assert rc == 2 and str(out / "dataset.json") in line and "voxel_resolution: 64 -> 32" in line and "batch_views" not in line
    assert (out / "dataset.json").read_bytes() == before


def test_second_build_data_on_one_out_stops_naming_the_first(tmp_path, capsys, live_process):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "LOCK").write_text(json.dumps({"host": socket.gethostname(), "pid": live_process.pid, "start_ticks": None}))
    (tmp_path / "m.json").write_text("[]")
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "m.json", "--out", out, "--no-progress")
    assert rc == 2 and f"pid {live_process.pid}" in line and not (out / "dataset.json").exists()


def test_build_data_exits_nonzero_when_every_asset_failed(tmp_path, capsys):
    (tmp_path / "a.stl").write_text("solid nothing\nendsolid\n")
    (tmp_path / "m.json").write_text(json.dumps([{"id": "a", "path": "a.stl"}, {"id": "b", "path": "b.xyz"}]))
    rc, line = run_cli(capsys, "build-data", "--manifest", tmp_path / "m.json", "--out", tmp_path / "o", "--no-progress")
    assert rc == 1 and "every asset failed (2)" in line
    assert len((tmp_path / "o" / "failures.jsonl").read_text().splitlines()) == 2


def test_missing_textures_are_recorded(tmp_path):
    from data_pipeline import build, config
    from data_pipeline.ingest import ingest

    (tmp_path / "m.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd textures/skin.png\n")
    (tmp_path / "a.obj").write_text("mtllib m.mtl\nmtllib gone.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                    "usemtl skin\nf 1/1 2/2 3/3\n")
    warnings = ingest(str(tmp_path / "a.obj")).warnings
    assert sorted(warnings) == sorted([f"missing texture/material file {tmp_path / 'gone.mtl'}",
                                       f"missing texture/material file {tmp_path / 'textures' / 'skin.png'}"])

    class Proc:  # the builder's bookkeeping, without rendering
        timings, stage = {}, None

        def process(self, entry):
            self.warnings = ingest(entry["path"]).warnings
            from trellis_jax.data import schema

            return schema.encode({"id": entry["id"], "warnings": self.warnings}, {"coords": np.zeros((1, 3), np.uint8)})

    cfg = config.get_config()
    build.build([{"id": "a", "path": str(tmp_path / "a.obj")}], str(tmp_path / "ds"), cfg, processor=Proc(), progress=False,
                log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "ds" / "warnings.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "a"] and all("missing texture" in r["warning"] for r in rows)


# ------------------------------------------------------------------------------------ corrupt records
def _shard_with_corrupt_records(tmp_path, bad=(1,)):
    from trellis_jax.data import schema, shards

    good = schema.encode({"id": "a"}, {"coords": np.zeros((2, 3), np.uint8), "features": np.zeros((2, 4), np.float16)})
    with shards.ShardWriter(str(tmp_path / "ds"), shard_size=8) as w:
        for i in range(5):
            w.add(f"r{i}", good[:-5] if i in bad else good)
    return shards.list_shards(str(tmp_path / "ds"))[0]


def test_corrupt_records_stop_by_default_and_are_skipped_within_the_limit(tmp_path, capsys):
    from trellis_jax.data import shards
    from trellis_jax.data.loaders import CORRUPT, DropCorrupt, RecordSource

    path = _shard_with_corrupt_records(tmp_path, bad=(1, 3))
    with pytest.raises(shards.ShardError, match="record 1"):
        RecordSource([path])[1]
    src = RecordSource([path], max_corrupt_records=2)
    kept = [e for e in (src[i] for i in range(5)) if DropCorrupt().filter(e)]
    assert len(kept) == 3 and src.skipped == [(path, 1), (path, 3)]
    err = capsys.readouterr().err
    assert f"skipping corrupt record {path}: record 1" in err and f"{path}: record 3" in err
    src = RecordSource([path], max_corrupt_records=1)
    assert CORRUPT in src[1]
    with pytest.raises(shards.ShardError, match=r"record 3.*more than max_corrupt_records=1"):
        src[3]


def test_training_configs_expose_the_skip_limit():
    from trellis_jax.config_loader import load_config

    for spec in ("experiments/train/ss_vae.py:tiny", "experiments/train/ss_flow.py:tiny", "experiments/train/slat_flow.py:tiny"):
        assert load_config(spec).data.max_corrupt_records == 0


# --------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_unique_temp_names_and_no_leftovers(tmp_path):
    from trellis_jax.atomic import atomic_write

    target = tmp_path / "f.bin"
    errors = []

    def writer(i):
        try:
            for _ in range(20):
                atomic_write(target, lambda t: t.write_bytes(bytes([i]) * 4096))
        except Exception as e:  # with a shared temp name this raised FileNotFoundError
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = target.read_bytes()
    assert not errors and len(set(data)) == 1 and len(data) == 4096
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda t: (t.write_bytes(b"half"), (_ for _ in ()).throw(RuntimeError("disk"))))
    assert target.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_directory_is_complete_or_absent(tmp_path):
    from trellis_jax.atomic import atomic_directory

    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "s") as d:
            (d / "a").write_text("1")
            raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "s") as d:
        (d / "a").write_text("1")
    assert (tmp_path / "s" / "a").read_text() == "1"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(tmp_path / "s"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# ---------------------------------------------------------------------------------------------- demo
def test_demo_pairs_outputs_with_their_own_prompts_when_one_is_skipped():
    from trellis_jax.demo import pair_outputs

    results = [{"index": 0, "dir": Path("s/sample_00_seed0")}, {"index": 2, "dir": Path("s/sample_02_seed2")}]
    rows, skipped = pair_outputs(results, ["cat.png", "dog.png", "cup.png"])
    assert [(r["prompt"], r["dir"]) for r in rows] == [("cat.png", "s/sample_00_seed0"), ("cup.png", "s/sample_02_seed2")]
    assert skipped == ["dog.png"]


def test_a_full_disk_however_wrapped_is_named():
    import errno

    from trellis_jax.train import _write_problem

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/checkpoints/5/state")
        except OSError as inner:
            raise RuntimeError("orbax: save failed") from inner
    except RuntimeError as e:
        assert _write_problem(e) == "no space left on device (/w/checkpoints/5/state)"
    assert _write_problem(ValueError("tensorstore: write failed: [Errno 28] No space left on device")) == "no space left on device"
    assert _write_problem(ValueError("unknown config key")) is None
