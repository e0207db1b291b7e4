"""Per-view depth / normal renders in the records and the grain input of the rf_decoder / mesh_decoder
stages: the 16-bit depth and 8-bit normal PNGs round-trip within their quantisation; the loaders give
the batch keys of the tasks' synthetic batches, K = views_per_asset distinct views per asset, and the
decoder task flattens them to one view per row; a dataset without depth maps is one clear error."""
import jax
import numpy as np
import pytest

from trellis_jax.config_loader import apply_overrides, load_config
from trellis_jax.data import schema, shards
from trellis_jax.data.loaders import make_loader
from trellis_jax.training.data import make_batches
from trellis_jax.training.trainer import build_task

V, S, R = 3, 16, 16


def _views():
    """V views, each with a distinct camera (z translation v + 2), flat colour, depth and normal."""
    ext = np.tile(np.eye(4, dtype=np.float32), (V, 1, 1))
    ext[:, 2, 3] = np.arange(V) + 2.0
    rgba = np.zeros((V, S, S, 4), np.uint8)
    depth = np.zeros((V, S, S), np.float32)
    normal = np.zeros((V, S, S, 3), np.float32)
    for v in range(V):
        rgba[v, ..., :3], rgba[v, ..., 3] = 40 * (v + 1), 255
        depth[v] = 1.5 + 0.25 * v
        normal[v] = (0.2 * v, 0.5, 1.0)
    return rgba, depth, normal, ext


def _dataset(root, geometry: bool, n_assets: int = 4):
    g = np.random.default_rng(0)
    rgba, depth, normal, ext = _views()
    png, offsets = schema.pack_pngs(rgba)
    with shards.ShardWriter(str(root), "data", shard_size=2) as w:
        for i in range(n_assets):
            n = int(g.integers(10, 40))
            coords = np.stack(np.unravel_index(np.sort(g.choice(R**3, n, replace=False)), (R,) * 3), -1).astype(np.uint8)
            arrays = {"coords": coords, "features": g.standard_normal((n, 64)).astype(np.float16), "views_png": png,
                      "views_png_offsets": offsets, "views_extrinsics": ext,
                      "views_intrinsics": np.tile(np.eye(3, dtype=np.float32), (V, 1, 1))}
            meta = {"id": f"a{i}", "captions": [], "resolution": R, "num_voxels": n}
            if geometry:
                arrays["views_depth_png"], arrays["views_depth_png_offsets"] = schema.pack_depth(depth)
                arrays["views_normal_png"], arrays["views_normal_png_offsets"] = schema.pack_normals(normal)
                meta["depth_scale"] = schema.DEPTH_SCALE
            w.add(f"a{i}", schema.encode(meta, arrays))
    return str(root)


def test_depth_and_normal_pngs_round_trip_through_a_record():
    _, depth, normal, _ = _views()
    depth[0, :4] = 0.0  # background
    d, do = schema.pack_depth(depth)
    n, no = schema.pack_normals(normal)
    meta, arrays = schema.decode(schema.encode({"id": "x", "depth_scale": schema.DEPTH_SCALE}, {
        "coords": np.zeros((1, 3), np.uint8), "features": np.zeros((1, 4), np.float16),
        "views_depth_png": d, "views_depth_png_offsets": do, "views_normal_png": n, "views_normal_png_offsets": no}))
    for v in range(V):
        got = schema.unpack_depth(arrays["views_depth_png"], arrays["views_depth_png_offsets"], v, meta["depth_scale"])
        assert got.dtype == np.float32 and got.shape == (S, S)
        np.testing.assert_allclose(got, depth[v], atol=schema.DEPTH_SCALE / 2 + 1e-7)
        assert (got[depth[v] == 0] == 0).all()
        np.testing.assert_allclose(schema.unpack_normal(arrays["views_normal_png"], arrays["views_normal_png_offsets"], v),
                                   normal[v], atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("stage", ["rf_decoder", "mesh_decoder"])
def test_decoder_loaders_give_k_distinct_views_per_asset(tmp_path, stage):
    _, depth, normal, _ = _views()
    data = _dataset(tmp_path, geometry=True)
    loader = make_loader(data, stage, batch_size=2, buckets=(64,), max_voxels=64, resolution=R, render_size=8,
                         views_per_asset=2, shard_index=0, shard_count=1)
    b = next(iter(loader))
    keys = {"coords", "feats", "mask", "image", "alpha", "extrinsics", "intrinsics"}
    assert set(b) == (keys | {"depth", "normal"} if stage == "mesh_decoder" else keys)
    assert b["feats"].shape == (2, 64, 64) and b["image"].shape == (2, 2, 8, 8, 3) and b["extrinsics"].shape == (2, 2, 4, 4)
    for i in range(2):
        views = [int(round(z)) - 2 for z in b["extrinsics"][i, :, 2, 3]]
        assert len(set(views)) == 2  # distinct views of one asset
        for k, v in enumerate(views):
            np.testing.assert_allclose(b["image"][i, k], 40 * (v + 1) / 255.0, atol=1e-6)
            if stage == "mesh_decoder":
                np.testing.assert_allclose(b["depth"][i, k], depth[v][:8, :8], atol=1e-4)
                np.testing.assert_allclose(b["normal"][i, k], normal[v][:8, :8], atol=1 / 255)


@pytest.mark.parametrize("stage", ["rf_decoder", "mesh_decoder"])
def test_decoder_task_prepares_one_view_per_row(tmp_path, stage):
    """The task's grain batch has the keys and shapes of its synthetic batch, with B·K rows."""
    data = _dataset(tmp_path, geometry=True)
    cfg = apply_overrides(load_config(f"experiments/train/{stage}.py:tiny"), [
        f"data.path={data}", "data.kind=grain", "data.worker_count=0", "data.capacity=64", "data.views_per_asset=2",
        "render.image_size=8"])
    task = build_task(cfg)
    batch = next(make_batches(cfg, task))
    ref = task.synthetic_batch(4, jax.random.PRNGKey(0))
    used = set(ref) - ({"depth", "normal"} if stage == "rf_decoder" else set())  # the RF loss reads no geometry
    assert set(batch) == used
    for k in used:
        assert batch[k].shape[0] == 4 and batch[k].shape[2:] == ref[k].shape[2:] and batch[k].dtype == ref[k].dtype, k
    np.testing.assert_array_equal(batch["coords"][0], batch["coords"][1])  # rows 0, 1: two views of one asset
    assert not np.array_equal(batch["extrinsics"][0], batch["extrinsics"][1])


def test_mesh_decoder_on_records_without_depth_is_one_clear_error(tmp_path):
    data = _dataset(tmp_path, geometry=False)
    loader = make_loader(data, "mesh_decoder", batch_size=2, buckets=(64,), max_voxels=64, resolution=R,
                         shard_index=0, shard_count=1)
    with pytest.raises(shards.ShardError, match=r"data-\d+.*lacks views_depth_png.*rebuild"):
        next(iter(loader))
    rf = make_loader(data, "rf_decoder", batch_size=2, buckets=(64,), max_voxels=64, resolution=R, shard_index=0, shard_count=1)
    assert next(iter(rf))["image"].shape[:2] == (2, 1)  # the RF stage needs no depth
