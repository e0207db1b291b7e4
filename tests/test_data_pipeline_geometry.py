"""Data pipeline, geometry side: cameras, ingest normalisation, rendering, voxelisation, feature sampling."""
import numpy as np
import pytest
import trimesh

from data_pipeline import cameras, features, ingest, voxelize


# ------------------------------------------------------------------------------------------ cameras
def test_radical_inverse_and_hammersley_rule():
    assert [cameras.radical_inverse(2, i) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]
    yaw, pitch = cameras.sphere_hammersley(0, 10, (0.0, 0.0))
    assert yaw == 0.0 and pitch == pytest.approx(-np.pi / 2)
    # i=5 of 10, offset (0.3, 0.1): u = 0.5 + 0.03 -> 2/3 u + 1/3; v = RI_2(5) + 0.1 = 0.625 + 0.1
    yaw, pitch = cameras.sphere_hammersley(5, 10, (0.3, 0.1))
    u = 2 / 3 * 0.53 + 1 / 3
    assert pitch == pytest.approx(np.arccos(1 - 2 * u) - np.pi / 2)
    assert yaw == pytest.approx(2 * np.pi * 0.725)


def test_view_distributions():
    rng = np.random.default_rng(0)
    v = cameras.render_views(150, rng)
    assert np.all(v["radius"] == 2.0) and np.allclose(v["fov"], np.deg2rad(40))
    assert np.all(np.abs(v["pitch"]) <= np.pi / 2)
    c = cameras.cond_views(24, rng)
    assert np.all((c["fov"] >= np.deg2rad(10) - 1e-9) & (c["fov"] <= np.deg2rad(70) + 1e-9))
    np.testing.assert_allclose(c["radius"] * np.sin(c["fov"] / 2), np.sqrt(3) / 2)


def test_extrinsics_look_at_origin_with_z_up():
    views = cameras.render_views(16, np.random.default_rng(1))
    ext = cameras.extrinsics_from_views(views)
    intr = cameras.intrinsics_from_fov(views["fov"])
    R = ext[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    uv, depth = cameras.project(np.array([[0.0, 0, 0], [0, 0, 0.1]]), ext, intr)
    np.testing.assert_allclose(uv[:, 0], 0.5, atol=1e-5)  # origin at the image centre
    np.testing.assert_allclose(depth[:, 0], 2.0, atol=1e-5)
    # A point above the origin appears higher in the image (smaller v) unless looking straight down.
    side = np.abs(views["pitch"]) < np.deg2rad(80)
    assert np.all(uv[side, 1, 1] < 0.5)
    assert intr[0, 0, 0] == pytest.approx(0.5 / np.tan(np.deg2rad(20)))
    # Blender/OpenGL pose <-> OpenCV extrinsics round trip.
    np.testing.assert_allclose(cameras.blender_c2w_to_extrinsics(cameras.opengl_c2w_from_extrinsics(ext)), ext, atol=1e-5)


# ------------------------------------------------------------------------------------------- ingest
def test_normalise_to_unit_cube_and_y_up(tmp_path):
    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    box.apply_translation((10.0, -3.0, 5.0))
    a = ingest.normalise([box])
    v, _ = a.geometry()
    np.testing.assert_allclose(v.max(0) - v.min(0), [1.0, 0.5, 0.25])
    np.testing.assert_allclose((v.max(0) + v.min(0)) / 2, 0.0, atol=1e-12)
    # glTF is y-up: an asset tall along file-y is tall along world-z after ingest.
    tall = trimesh.creation.box(extents=(0.2, 1.0, 0.4))
    tall.export(tmp_path / "tall.glb")
    v, _ = ingest.ingest(str(tmp_path / "tall.glb")).geometry()
    np.testing.assert_allclose(v.max(0) - v.min(0), [0.2, 0.4, 1.0], atol=1e-6)


@pytest.mark.parametrize("content,reason", [
    (b"not a mesh at all", "unreadable"),
    (b"ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n", "empty"),
])
def test_bad_files_raise_asset_error(tmp_path, content, reason):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ingest.AssetError, match=reason):
        ingest.ingest(str(path))


def test_nan_and_degenerate_meshes():
    m = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], faces=[[0, 1, 2]], process=False)
    with pytest.raises(ingest.AssetError, match="non-finite"):
        ingest.normalise([m], "nan.ply")
    m = trimesh.Trimesh(vertices=np.ones((3, 3)), faces=[[0, 1, 2]], process=False)
    with pytest.raises(ingest.AssetError, match="degenerate"):
        ingest.normalise([m], "point.ply")


# ----------------------------------------------------------------------------------------- voxelise
def _plane(half, z):
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_voxelize_axis_aligned_planes_by_hand():
    # Plane z=0 lies exactly on the face between voxel layers 31 and 32, and x,y = +-0.25 are voxel
    # faces too (16 and 48): Open3D's closed-box test marks both neighbours -> 34 x 34 x 2 voxels.
    idx = voxelize.voxelize(*_plane(0.25, 0.0))
    assert len(idx) == 34 * 34 * 2
    np.testing.assert_array_equal(idx.min(0), [15, 15, 31])
    np.testing.assert_array_equal(idx.max(0), [48, 48, 32])
    # Off-grid plane z=0.3 (grid 51.2), x,y in +-0.2 (grid 19.2..44.8) -> one layer of 26 x 26.
    idx = voxelize.voxelize(*_plane(0.2, 0.3))
    assert len(idx) == 26 * 26 and np.all(idx[:, 2] == 51)
    np.testing.assert_array_equal(idx.min(0)[:2], [19, 19])
    np.testing.assert_array_equal(idx.max(0)[:2], [44, 44])
    # Vertices beyond the cube are clipped to +-(0.5 - 1e-6): still inside the grid.
    idx = voxelize.voxelize(*_plane(0.7, 0.0))
    assert idx.min() == 0 and idx.max() == 63 and len(idx) == 64 * 64 * 2


def test_voxelize_matches_brute_force_and_contains_surface_samples():
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.5, 0.5, (12, 3))
    f = rng.integers(0, 12, (10, 3))
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    res = 8
    got = voxelize.voxelize(v, f, res)
    # Brute force as Open3D does it: every voxel against every triangle.
    grid = (np.clip(v, -voxelize.CLIP, voxelize.CLIP) + 0.5) * res
    allvox = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    tri = grid[f]
    pairs_t = np.repeat(np.arange(len(f)), len(allvox))
    pairs_v = np.tile(allvox, (len(f), 1))
    hit = voxelize._sat_overlap(tri[pairs_t], pairs_v + 0.5, 0.5)
    want = np.unique(pairs_v[hit], axis=0)
    np.testing.assert_array_equal(got, want)
    # Every sampled surface point's voxel is marked (sampling voxelisers give a subset).
    sphere = trimesh.creation.icosphere(3, radius=0.45)
    idx = voxelize.voxelize(sphere.vertices, sphere.faces)
    pts = trimesh.sample.sample_surface(sphere, 100000, seed=0)[0]
    sampled = np.unique(np.floor((pts + 0.5) * 64).astype(int), axis=0)
    marked = set(map(tuple, idx))
    assert all(tuple(p) in marked for p in sampled)
    assert len(idx) < 1.3 * len(sampled)  # only edge-grazing voxels are extra


# ----------------------------------------------------------------------------------------- features
def _grid_sample_reference(fmap, uv):
    """Literal torch grid_sample(bilinear, align_corners=False, zeros) for one [H, W, C] map."""
    H, W, C = fmap.shape
    out = np.zeros((len(uv), C))
    for n, (u, v) in enumerate(uv):
        gx, gy = 2 * u - 1, 2 * v - 1
        x, y = ((gx + 1) * W - 1) / 2, ((gy + 1) * H - 1) / 2
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            if 0 <= xi < W and 0 <= yi < H:
                out[n] += (1 - abs(x - xi)) * (1 - abs(y - yi)) * fmap[yi, xi]
    return out


def test_bilinear_sample_matches_grid_sample():
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(5, 7, 3)).astype(np.float32)
    uv = rng.uniform(-0.2, 1.2, (200, 2)).astype(np.float32)
    got = np.asarray(features.bilinear_sample(fmap, uv))
    np.testing.assert_allclose(got, _grid_sample_reference(fmap, uv), atol=1e-5)


def _ramp_encoder(grid=5):
    """An ImageEncoder whose patch map is (x, y, image mean) of each patch: known answers."""
    import jax.numpy as jnp

    def fn(params, images):
        n = images.shape[0]
        xs = jnp.broadcast_to(jnp.arange(grid, dtype=jnp.float32)[None, None, :, None], (n, grid, grid, 1))
        ys = jnp.broadcast_to(jnp.arange(grid, dtype=jnp.float32)[None, :, None, None], (n, grid, grid, 1))
        mean = jnp.broadcast_to(images.mean(axis=(1, 2, 3))[:, None, None, None], (n, grid, grid, 1))
        return jnp.concatenate([xs + params, ys, mean], -1)

    return features.ImageEncoder("ramp", fn, jnp.float32(0.0), grid * 14, grid, 3)


def test_voxel_features_project_sample_and_average():
    views = cameras.render_views(5, np.random.default_rng(0))
    ext, intr = cameras.extrinsics_from_views(views), cameras.intrinsics_from_fov(views["fov"])
    images = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 4), dtype=np.uint8)
    idx = np.array([[0, 0, 0], [32, 32, 32], [63, 10, 40], [5, 60, 20]])
    enc = _ramp_encoder()
    got = features.voxel_features(enc, images, ext, intr, idx, batch_views=2, voxel_bucket=8)
    assert got.dtype == np.float16 and got.shape == (4, 3)
    uv, _ = cameras.project(voxelize.voxel_centres(idx), ext, intr)
    pixels = features.preprocess_views(images, enc.image_size)
    want = np.zeros((4, 3))
    for v in range(5):
        fmap = np.asarray(enc.fn(0.0, pixels[v:v + 1]))[0]
        want += _grid_sample_reference(fmap, uv[v])
    np.testing.assert_allclose(got.astype(np.float32), want / 5, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------- render
@pytest.fixture(scope="module")
def renderer():
    render = pytest.importorskip("data_pipeline.render")
    try:
        r = render.Renderer(64)
    except Exception as e:  # no offscreen GL on this machine
        pytest.skip(f"offscreen rendering unavailable: {e}")
    yield r
    r.close()


def test_render_silhouette_matches_projection(renderer):
    from data_pipeline.render import render_asset

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.3))
    box.visual.vertex_colors = [200, 30, 30, 255]
    asset = ingest.normalise([box])
    out = render_asset(renderer, asset, cameras.render_views(6, np.random.default_rng(0)))
    img = out["images"]
    assert img.shape == (6, 64, 64, 4) and img.dtype == np.uint8
    assert np.all(img[..., 3][:, 0, :] == 0)  # background transparent
    fg = img[..., 3] == 255
    assert np.all(img[fg][:, 0] > img[fg][:, 1])  # red object
    # Surface points project onto covered pixels: same cameras for renders and features.
    pts = trimesh.sample.sample_surface(asset.meshes[0], 3000, seed=0)[0]
    uv, _ = cameras.project(pts, out["extrinsics"], out["intrinsics"])
    pix = np.clip((uv * 64).astype(int), 0, 63)
    covered = np.stack([img[v, pix[v, :, 1], pix[v, :, 0], 3] > 0 for v in range(6)])
    assert covered.mean() > 0.97
    # ...and pixels far from every projected point are background.
    hull = np.zeros((6, 64, 64), bool)
    for v in range(6):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                hull[v, np.clip(pix[v, :, 1] + dy, 0, 63), np.clip(pix[v, :, 0] + dx, 0, 63)] = True
    assert np.mean(img[..., 3][~hull] > 0) < 0.02


def test_render_textured_glb(renderer, tmp_path):
    from PIL import Image

    from data_pipeline.render import render_asset

    plane = trimesh.creation.box(extents=(1.0, 1.0, 0.05))
    uv = plane.vertices[:, :2] + 0.5
    checker = np.zeros((64, 64, 3), np.uint8)
    checker[:, :32] = (230, 20, 20)
    checker[:, 32:] = (20, 230, 20)
    plane.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(checker)))
    path = tmp_path / "textured.glb"
    plane.export(path)
    asset = ingest.ingest(str(path), up="z")
    views = {"yaw": np.array([0.3]), "pitch": np.array([1.2]), "radius": np.array([2.0]), "fov": np.array([0.7])}
    img = render_asset(renderer, asset, views)["images"][0]
    fg = img[img[..., 3] == 255].astype(int)
    red = np.mean(fg[:, 0] > fg[:, 1] + 50)
    green = np.mean(fg[:, 1] > fg[:, 0] + 50)
    assert len(fg) > 200 and red > 0.2 and green > 0.2, (len(fg), red, green)
