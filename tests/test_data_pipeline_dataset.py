"""Data pipeline, dataset side: records, shards, build driver (failures, crash/restart), encode,
grain loaders, Beam. Small settings: 64^2 renders, few views, the tiny random image encoder."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trellis_jax.data import schema, shards
from trellis_jax.slat_normalization import SLAT_MEAN, SLAT_STD
from data_pipeline import builtin, config
from data_pipeline.build import build, read_failures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = os.path.join(REPO, "experiments", "data_pipeline_small.py")


def small_cfg(**overrides):
    cfg = config.load_config(SMALL)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _bad_assets(d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "garbage.obj"), "wb") as f:
        f.write(b"\x00\x01 this is not a mesh")
    with open(os.path.join(d, "nan.ply"), "w") as f:
        f.write("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\nnan 1 0\n3 0 1 2\n")
    return [{"id": "bad_missing", "path": os.path.join(d, "missing.ply"), "captions": []},
            {"id": "bad_garbage", "path": os.path.join(d, "garbage.obj"), "captions": []},
            {"id": "bad_nan", "path": os.path.join(d, "nan.ply"), "captions": []}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    entries = builtin.write_procedural(str(root / "meshes"), 4)
    entries = entries[:2] + _bad_assets(str(root / "bad")) + entries[2:]
    out = str(root / "ds")
    summary = build(entries, out, small_cfg(shard_size=3), progress=False, log=lambda *_: None)
    return {"root": root, "entries": entries, "out": out, "summary": summary}


def test_build_writes_records_and_failures(built):
    s = built["summary"]
    assert s["processed"] == 4 and s["failed"] == 3 and s["assets_per_min"] > 0
    fails = read_failures(built["out"])
    assert set(fails) == {"bad_missing", "bad_garbage", "bad_nan"}
    assert "not found" in fails["bad_missing"]["reason"]
    assert "non-finite" in fails["bad_nan"]["reason"] and fails["bad_nan"]["stage"] == "ingest"
    records = list(shards.read_dataset(built["out"]))
    assert [m["id"] for m, _ in records] == [e["id"] for e in built["entries"] if not e["id"].startswith("bad")]
    assert len(shards.list_shards(built["out"])) == 2  # shard_size 3
    meta, a = records[0]
    assert meta["captions"] and meta["feature_model"] == "tiny" and meta["num_voxels"] == len(a["coords"]) > 0
    assert a["coords"].dtype == np.uint8 and a["coords"].shape[1] == 3
    assert a["features"].dtype == np.float16 and a["features"].shape == (len(a["coords"]), 64)
    assert np.all(np.isfinite(a["features"])) and np.abs(a["features"]).max() > 0
    assert len(a["views_png_offsets"]) == 5 and a["views_extrinsics"].shape == (4, 4, 4)  # store_views=4
    assert len(a["cond_png_offsets"]) == 5 and a["cond_intrinsics"].shape == (4, 3, 3)
    img = schema.unpack_png(a["views_png"], a["views_png_offsets"], 2)
    assert img.shape == (64, 64, 4) and img[..., 3].max() == 255
    # per stored view: depth (camera z, 0 off the asset) and normal maps, covering what the RGBA alpha covers
    depth = schema.unpack_depth(a["views_depth_png"], a["views_depth_png_offsets"], 2, meta["depth_scale"])
    normal = schema.unpack_normal(a["views_normal_png"], a["views_normal_png_offsets"], 2)
    assert len(a["views_depth_png_offsets"]) == len(a["views_normal_png_offsets"]) == 5
    assert depth.shape == (64, 64) and normal.shape == (64, 64, 3)
    covered = depth > 0
    assert np.mean(covered == (img[..., 3] >= 128)) > 0.97 and (normal[~covered] == 0).all()
    assert 2 - np.sqrt(3) / 2 - 0.01 < depth[covered].min() and depth.max() < 2 + np.sqrt(3) / 2 + 0.01  # radius-2 views
    n = normal[covered] * 2 - 1
    assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=0.02)
    pts = a["surface_points"]  # ground-truth surface samples: on the surface, so inside the surface voxels (±1)
    assert pts.shape == (2048, 3) and pts.dtype == np.float32 and np.abs(pts).max() <= 0.5 + 1e-6
    res = meta["resolution"]
    cell = np.clip(np.floor((pts + 0.5) * res), 0, res - 1).astype(np.int64)
    d = np.abs(cell[:, None, :] - a["coords"].astype(np.int64)[None]).max(-1).min(1)
    assert d.max() <= 1


def test_build_rerun_skips_everything(built):
    s = build(built["entries"], built["out"], small_cfg(shard_size=3), progress=False, log=lambda *_: None)
    assert s["processed"] == 0 and s["failed"] == 0 and s["skipped"] == len(built["entries"])


# --------------------------------------------------------------------------------- records, shards
def test_schema_roundtrip_and_corruption():
    arrays = {"coords": np.arange(12, dtype=np.uint8).reshape(4, 3), "features": np.ones((4, 2), np.float16),
              "ss_latent": np.zeros((16, 16, 16, 8), np.float32)}
    buf = schema.encode({"id": "x", "captions": ["a"]}, arrays)
    meta, out = schema.decode(buf)
    assert meta == {"id": "x", "captions": ["a"]}
    for k in arrays:
        np.testing.assert_array_equal(out[k], arrays[k])
        assert out[k].dtype == arrays[k].dtype
    with pytest.raises(schema.RecordError, match="truncated"):
        schema.decode(buf[:-7])
    with pytest.raises(schema.RecordError, match="magic"):
        schema.decode(b"XXXX" + buf[4:])
    with pytest.raises(schema.RecordError, match="version"):
        schema.decode(buf[:4] + (99).to_bytes(2, "little") + buf[6:])
    with pytest.raises(schema.RecordError, match="lacks array 'features'"):
        schema.decode(schema.encode({"id": "y"}, {"coords": arrays["coords"]}))


def test_truncated_shard_and_corrupt_record_name_shard_and_index(tmp_path):
    good = schema.encode({"id": "a"}, {"coords": np.zeros((2, 3), np.uint8), "features": np.zeros((2, 4), np.float16)})
    with shards.ShardWriter(str(tmp_path / "ds"), shard_size=8) as w:
        w.add("a", good)
        w.add("b", good[:-5])  # a record cut short
        w.add("c", good)
    path = shards.list_shards(str(tmp_path / "ds"))[0]
    with pytest.raises(shards.ShardError, match=r"data-00000\.arrayrecord: record 1: record truncated"):
        list(shards.read_shard(path))
    from trellis_jax.data.loaders import RecordSource

    src = RecordSource([path])
    assert src[0]["id"] == "a"
    with pytest.raises(shards.ShardError, match=r"data-00000\.arrayrecord: record 1"):
        src[1]
    # A truncated file is refused when opened, naming it.
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(shards.ShardError, match=r"data-00000\.arrayrecord: unreadable or truncated"):
        RecordSource([path])


# --------------------------------------------------------------------------------- crash / restart
def test_sigkill_mid_run_then_restart_keeps_every_asset_once(tmp_path):
    entries = builtin.write_procedural(str(tmp_path / "meshes"), 8)
    manifest = str(tmp_path / "manifest.json")
    config.write_manifest(manifest, entries)
    out = str(tmp_path / "ds")
    cmd = [sys.executable, "-m", "data_pipeline.build", "--manifest", manifest, "--out", out, "--config", SMALL,
           "--set", "shard_size=2", "--set", "num_cond_views=1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(shards.list_shards(out) if os.path.isdir(out) else []) < 1:
            time.sleep(0.05)
        time.sleep(0.3)  # let it get into the next shard
        assert proc.poll() is None, "driver finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = shards.committed_ids(out)
    assert 1 <= len(partial) < 8
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [m["id"] for m, _ in shards.read_dataset(out, fields=("coords",))]
    assert sorted(ids) == sorted(e["id"] for e in entries)  # every asset exactly once
    assert not [p for p in os.listdir(shards.shard_dir(out)) if p.endswith(".tmp")]


# ------------------------------------------------------------------------------------- encode + loaders
@pytest.fixture(scope="module")
def encoded(built, tmp_path_factory):
    from data_pipeline.encode import encode_dataset, random_encoders

    out = str(tmp_path_factory.mktemp("enc"))
    before = {p: os.path.getsize(p) for p in shards.list_shards(built["out"])}
    ss_fn, slat_fn = random_encoders(64)
    s = encode_dataset(built["out"], out, ss_fn, slat_fn, progress=False, log=lambda *_: None)
    assert s["encoded"] == 4
    assert {p: os.path.getsize(p) for p in shards.list_shards(built["out"])} == before  # input untouched
    again = encode_dataset(built["out"], out, ss_fn, slat_fn, progress=False, log=lambda *_: None)
    assert again["encoded"] == 0 and again["skipped"] == 4
    return out


def test_encoded_records(encoded):
    for meta, a in shards.read_dataset(encoded):
        assert a["ss_latent"].shape == (16, 16, 16, 8) and a["ss_latent"].dtype == np.float32
        assert a["slat"].shape == (meta["num_voxels"], 8) and a["slat"].dtype == np.float32
        assert np.abs(a["ss_latent"]).max() > 0


LOADER_KW = dict(batch_size=2, buckets=(8192, 32768), cond_image_size=70, shard_index=0, shard_count=1, seed=3)


def test_loaders_each_stage(encoded):
    from trellis_jax.data import loaders

    b = next(iter(loaders.make_loader(encoded, "ss_vae", **LOADER_KW)))
    assert b["occupancy"].shape == (2, 64, 64, 64, 1) and set(np.unique(b["occupancy"])) == {0.0, 1.0}
    b = next(iter(loaders.make_loader(encoded, "ss_flow", cond="image", **LOADER_KW)))
    assert b["ss_latent"].shape == (2, 16, 16, 16, 8) and b["cond_image"].shape == (2, 70, 70, 3)
    assert 0.0 <= b["cond_image"].min() and b["cond_image"].max() <= 1.0
    b = next(iter(loaders.make_loader(encoded, "slat_vae", **LOADER_KW)))
    L = b["coords"].shape[1]
    assert L in (8192, 32768) and b["feats"].shape == (2, L, 64) and b["mask"].shape == (2, L)
    assert b["image"].shape == (2, 64, 64, 3) and b["extrinsics"].shape == (2, 4, 4)
    n = b["mask"].sum(1)
    assert np.all(b["mask"][0, : n[0]]) and not np.any(b["feats"][0, n[0]:])  # valid prefix, zero padding
    b = next(iter(loaders.make_loader(encoded, "slat_flow", cond="text", **LOADER_KW)))
    assert b["feats"].shape[-1] == 8 and b["caption"].shape == (2,) and all(len(c) > 0 for c in b["caption"])
    st = loaders.to_sparse_tensor(b)
    np.testing.assert_array_equal(np.asarray(st.counts()), b["mask"].sum(1))
    # SLat normalisation applied: feats = (slat - mean) / std on valid rows.
    ids = {m["id"]: a for m, a in shards.read_dataset(encoded)}
    n0 = b["mask"][0].sum()
    raw = [a["slat"] for a in ids.values() if len(a["slat"]) == n0]
    assert any(np.allclose(b["feats"][0, : len(r)], (r - np.array(SLAT_MEAN, np.float32)) / np.array(SLAT_STD, np.float32), atol=1e-5) for r in raw)


def test_loader_sharding_covers_each_record_once(encoded):
    from trellis_jax.data import loaders

    seen = []
    for i in range(2):
        kw = dict(LOADER_KW, shard_index=i, shard_count=2, batch_size=1, num_epochs=1, shuffle=False)
        for b in loaders.make_loader(encoded, "ss_flow", **kw):
            seen.append(b["ss_latent"][0].tobytes())
    assert len(seen) == 4 and len(set(seen)) == 4


def test_loader_state_resume_and_workers(encoded):
    from trellis_jax.data import loaders

    kw = dict(LOADER_KW, batch_size=1)
    it = iter(loaders.make_loader(encoded, "slat_flow", **kw))
    want = [next(it)["feats"] for _ in range(4)]
    it = iter(loaders.make_loader(encoded, "slat_flow", **kw))
    next(it)
    state = it.get_state()
    it2 = iter(loaders.make_loader(encoded, "slat_flow", **kw))
    it2.set_state(json.loads(json.dumps(state)) if isinstance(state, dict) else state)
    for w in want[1:]:
        np.testing.assert_array_equal(next(it2)["feats"], w)
    # A spawned worker process (grain multiprocessing) gives the same stream.
    itw = iter(loaders.make_loader(encoded, "slat_flow", worker_count=1, **kw))
    for w in want:
        np.testing.assert_array_equal(next(itw)["feats"], w)
    assert itw.get_state() is not None


# -------------------------------------------------------------------------------------------- beam
def test_beam_direct_runner(tmp_path):
    pytest.importorskip("apache_beam")
    from data_pipeline.beam_pipeline import run

    entries = builtin.write_procedural(str(tmp_path / "meshes"), 2)
    entries.append({"id": "bad", "path": str(tmp_path / "nope.ply"), "captions": []})
    out = str(tmp_path / "ds")
    s = run(entries, out, small_cfg(num_views=4, num_cond_views=1), num_shards=2)
    assert s["processed"] == 2 and s["failed"] == 1
    ids = sorted(m["id"] for m, _ in shards.read_dataset(out, fields=("coords",)))
    assert ids == ["procedural_0000", "procedural_0001"]


# ------------------------------------------------------------------------------------------ pybullet
def test_pybullet_meshes_build():
    if builtin.pybullet_data_dir(download=os.environ.get("TRELLIS_JAX_NO_DOWNLOAD") is None) is None:
        pytest.skip("pybullet_data not available (offline?)")
    entries = [e for e in builtin.pybullet_entries() if e["id"] in ("pybullet_duck", "pybullet_bunny")]
    assert len(entries) == 2
    from data_pipeline.process import AssetProcessor

    proc = AssetProcessor(small_cfg(num_views=2, num_cond_views=0, store_views=0))
    try:
        for e in entries:
            meta, a = schema.decode(proc.process(e))
            assert meta["num_voxels"] > 100 and a["features"].shape[1] == 64
    finally:
        proc.close()


def test_loader_state_in_orbax_checkpoint(encoded, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    from trellis_jax.data import loaders

    kw = dict(LOADER_KW, batch_size=1)
    it = iter(loaders.make_loader(encoded, "ss_flow", **kw))
    next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",),
                                 item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mngr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = next(it)["ss_latent"]
    it2 = iter(loaders.make_loader(encoded, "ss_flow", **kw))
    mngr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    np.testing.assert_array_equal(next(it2)["ss_latent"], want)


def test_manifest_csv_and_config_overrides(tmp_path):
    (tmp_path / "m.csv").write_text('id,path,captions\na,meshes/a.ply,"a red box|a box"\nb,/abs/b.glb,"[""x"", ""y""]"\n')
    entries = config.read_manifest(str(tmp_path / "m.csv"))
    assert entries[0] == {"id": "a", "path": str(tmp_path / "meshes/a.ply"), "captions": ["a red box", "a box"]}
    assert entries[1]["path"] == "/abs/b.glb" and entries[1]["captions"] == ["x", "y"]
    (tmp_path / "dup.json").write_text(json.dumps([{"id": "a", "path": "x.ply"}, {"id": "a", "path": "y.ply"}]))
    with pytest.raises(ValueError, match="duplicate asset id 'a'"):
        config.read_manifest(str(tmp_path / "dup.json"))
    cfg = config.load_config(SMALL, ["num_views=3", "encoder=tiny"])
    assert cfg.num_views == 3 and cfg.encoder == "tiny"
    with pytest.raises(KeyError, match="unknown config key 'num_view'"):
        config.load_config(None, ["num_view=3"])


def test_encoders_from_project_modules():
    """The encode stage's adapter drives the project's SS and SLat VAE encoders (tiny, random init)."""
    import jax
    import jax.numpy as jnp
    from flax.linen import meta

    from data_pipeline.encode import encoders_from_modules
    from trellis_jax.models.slat_encoder import SLatEncoder
    from trellis_jax.models.ss_vae import SparseStructureEncoder
    from trellis_jax.sparse import SparseTensor

    ss = SparseStructureEncoder(in_channels=1, latent_channels=8, num_res_blocks=1, channels=[4, 4, 4],
                                num_res_blocks_middle=1)
    occ = jnp.zeros((1, 64, 64, 64, 1)).at[0, 20:40, 20:40, 30].set(1.0)
    ss_params = meta.unbox(ss.init(jax.random.PRNGKey(0), occ[:, :16, :16, :16]))  # conv params: size-free
    slat = SLatEncoder(resolution=64, in_channels=16, model_channels=64, latent_channels=8, num_blocks=1)
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 64, (100, 3)), axis=0)
    st = SparseTensor.from_samples([coords], [rng.normal(size=(len(coords), 16)).astype(np.float32)], capacity=128)
    slat_params = meta.unbox(slat.init(jax.random.PRNGKey(1), st))
    ss_fn, slat_fn = encoders_from_modules(ss, ss_params, slat, slat_params)
    z = ss_fn(occ)
    assert z.shape == (1, 16, 16, 16, 8) and np.all(np.isfinite(np.asarray(z)))
    f = slat_fn(st)
    assert f.shape == (1, 128, 8) and np.all(np.isfinite(np.asarray(f)[0, : len(coords)]))
    assert not np.any(np.asarray(f)[0, len(coords):])  # padding rows stay zero
