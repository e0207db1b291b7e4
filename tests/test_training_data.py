"""Trainer data: synthetic batches are a function of the step; grain iterators resume at the same position;
a short G_S run on a grain latent dataset (frozen tiny CLIP text condition) checkpoints the grain state."""
import json

import numpy as np
import pytest

from trellis_jax.data import schema, shards
from trellis_jax.config_loader import apply_overrides, load_config
from trellis_jax.training.data import GrainBatches, SyntheticBatches, make_batches
from trellis_jax.training.trainer import build_task


@pytest.fixture(scope="module")
def latent_dataset(tmp_path_factory):
    """6 encoded assets: 64³ coords, features, 8³×8 ss_latent (tiny G_S size), slat, captions."""
    root = tmp_path_factory.mktemp("latents")
    g = np.random.default_rng(0)
    with shards.ShardWriter(str(root), "data", shard_size=3) as w:
        for i in range(6):
            n = int(g.integers(20, 60))
            flat = np.sort(g.choice(16**3, n, replace=False))
            coords = (np.stack(np.unravel_index(flat, (16,) * 3), -1) + 20).astype(np.uint8)
            arrays = {"coords": coords, "features": g.standard_normal((n, 4)).astype(np.float16),
                      "ss_latent": g.standard_normal((8, 8, 8, 8)).astype(np.float32),
                      "slat": g.standard_normal((n, 8)).astype(np.float32)}
            meta = {"id": f"asset{i}", "captions": [f"object {i}", "a thing"], "resolution": 64, "num_voxels": n}
            w.add(meta["id"], schema.encode(meta, arrays))
    return str(root)


def test_synthetic_batches_depend_only_on_step():
    cfg = load_config("experiments/train/ss_flow.py:tiny")
    task = build_task(cfg)
    a = SyntheticBatches(task, 2, seed=0)
    first = [next(a) for _ in range(3)]
    state = a.get_state()
    assert state == {"kind": "synthetic", "step": 3}
    nxt = next(a)
    b = SyntheticBatches(task, 2, seed=0)
    b.set_state(state)
    np.testing.assert_array_equal(next(b)["ss_latent"], nxt["ss_latent"])
    assert not np.array_equal(first[0]["ss_latent"], first[1]["ss_latent"])
    with pytest.raises(ValueError, match="grain"):
        b.set_state({"kind": "grain", "state": "{}"})


def test_grain_iterator_state_round_trip(latent_dataset):
    cfg = apply_overrides(load_config("experiments/train/ss_vae.py:tiny"),
                          [f"data.path={latent_dataset}", "data.kind=grain", "data.resolution=64", "data.worker_count=0"])
    task = build_task(cfg)
    it = make_batches(cfg, task)
    assert isinstance(it, GrainBatches)
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it)["occupancy"] for _ in range(3)]  # crosses the epoch boundary (6 assets, batch 2)
    again = make_batches(cfg, task)
    again.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(again)["occupancy"], e)


def test_grain_flow_run_with_frozen_text_encoder(latent_dataset, tmp_path):
    from trellis_jax.training import checkpoint, trainer

    cfg = apply_overrides(load_config("experiments/train/ss_flow.py:tiny"), [
        f"data.path={latent_dataset}", "data.kind=grain", "data.worker_count=0", "cond.kind=text", "cond.arch=tiny",
        "model.args.cond_channels=64", "model.args.model_channels=32", "model.args.num_blocks=1", "batch_size=2",
        "total_steps=3", "ckpt_every=2", "mesh.data=1", "init_rng_impl=rbg"])
    import jax

    cfg.mesh.data = len(jax.devices())  # the test session simulates 8 CPU devices
    cfg.batch_size = 2 * len(jax.devices())
    out = trainer.run(cfg, tmp_path, log=lambda m: None)
    assert sorted(out["losses"]) == [0, 1, 2] and all(np.isfinite(v) for v in out["losses"].values())
    ck = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
    assert ck.all_steps() == [2, 3]
    data_state = json.loads((tmp_path / "checkpoints" / "3" / "data" / "metadata").read_text())
    assert data_state["kind"] == "grain" and data_state["state"]
    ck.close()


def test_grain_slat_flow_batches_are_padded_masked_and_normalised(latent_dataset):
    cfg = apply_overrides(load_config("experiments/train/slat_flow.py:tiny"), [
        f"data.path={latent_dataset}", "data.kind=grain", "data.capacity=64", "cond.kind=text", "cond.arch=tiny",
        "model.args.cond_channels=64", "batch_size=2"])
    cfg.slat_normalization.mean = [1.0] * 8
    cfg.slat_normalization.std = [2.0] * 8
    task = build_task(cfg)
    batch = next(make_batches(cfg, task))
    assert batch["coords"].shape == (2, 64, 3) and batch["feats"].shape == (2, 64, 8) and batch["mask"].shape == (2, 64)
    assert batch["cond"].shape == (2, 77, 64) and batch["cond"].dtype == np.float32
    records = [rec for _, rec in shards.read_dataset(latent_dataset)]
    for b in range(2):
        n = int(batch["mask"][b].sum())
        assert batch["mask"][b, :n].all() and not batch["mask"][b, n:].any()
        rec = next(r for r in records if len(r["coords"]) == n and np.array_equal(r["coords"], batch["coords"][b, :n]))
        np.testing.assert_allclose(batch["feats"][b, :n], (rec["slat"] - 1.0) / 2.0, rtol=1e-6)
        assert not batch["feats"][b, n:].any()
