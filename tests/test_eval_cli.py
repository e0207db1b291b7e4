"""`trellis-jax eval`: output writers and ground-truth views (fast), bad input is one error line (fast),
and end to end on a tiny built dataset (2 procedural assets, 4 stored 64² views) with random networks
(slow: several CPU minutes on 2 shared cores): the table, metrics.json, metrics.csv and grids appear and
agree with each other."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from trellis_jax.eval import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECON = os.path.join(REPO, "experiments", "eval", "reconstruction.py") + ":tiny"
GEN = os.path.join(REPO, "experiments", "eval", "generation.py") + ":tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from data_pipeline import builtin, config
    from data_pipeline.build import build

    root = tmp_path_factory.mktemp("evalds")
    entries = builtin.write_procedural(str(root / "meshes"), 2)
    cfg = config.load_config(os.path.join(REPO, "experiments", "data_pipeline_small.py"))
    cfg.voxel_resolution = 32
    build(entries, str(root / "ds"), cfg, progress=False, log=lambda *_: None)
    return str(root / "ds")


def _lpips_weights(d):
    from trellis_jax.losses import lpips as L

    rng = np.random.default_rng(0)
    vgg, lin, in_ch = {}, {}, 3
    for layers, ch in zip(L.VGG16_STAGES, L.VGG16_CHANNELS):
        for i in layers:
            vgg[f"features.{i}.weight"] = (rng.standard_normal((ch, in_ch, 3, 3)) * np.sqrt(2 / (9 * in_ch))).astype(np.float32)
            vgg[f"features.{i}.bias"] = np.zeros(ch, np.float32)
            in_ch = ch
    for k, ch in enumerate(L.VGG16_CHANNELS):
        lin[f"lin{k}.model.1.weight"] = rng.uniform(0, 1, (1, ch, 1, 1)).astype(np.float32)
    np.savez(d / "vgg16.npz", **vgg)
    np.savez(d / "lin.npz", **lin)
    return d / "vgg16.npz", d / "lin.npz"


def _tiny_checkpoints(d, resolution: int = 32):
    """Random tiny encoder / Gaussian / mesh / RF decoders saved as official-layout checkpoints."""
    import jax

    from experiments.models.slat_vae import VARIANTS
    from trellis_jax.checkpoints import save_model
    from trellis_jax.eval.reconstruction import _random
    from trellis_jax.models.registry import build_model

    out = {}
    for i, (key, variant) in enumerate([("encoder", "tiny_enc"), ("decoder_gs", "tiny_dec_gs"), ("decoder_mesh", "tiny_dec_mesh"),
                                        ("decoder_rf", "tiny_dec_rf")]):
        name, cls, args = VARIANTS[variant]
        args = dict(args, resolution=resolution)
        save_model(d / name, cls, args, _random(build_model(cls, args), i))
        out[key] = str(d / name)
    return out


@pytest.mark.slow
def test_reconstruction_eval_writes_table_json_csv_grids(dataset, tmp_path, capsys):
    """Gaussian, mesh and RF decoders (random tiny checkpoints) on the built dataset: every column of the
    table is computed (PSNR-N against the records' normal renders), the RF decoder is its own row."""
    vgg, lin = _lpips_weights(tmp_path)
    ck = _tiny_checkpoints(tmp_path)
    w = tmp_path / "w"
    rc = cli.main(["--config", RECON, "--workdir", str(w), f"--config.data={dataset}", f"--config.networks.lpips_backbone={vgg}",
                   f"--config.networks.lpips_linear={lin}"] + [f"--config.checkpoints.{k}={v}" for k, v in ck.items()])
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
    assert rc == 0
    assert "| Method | PSNR ↑ | SSIM ↑ | LPIPS ↓" in out and "(radiance-field decoder)" in out
    m = json.loads((w / "metrics.json").read_text())
    # every network came from a file (random-valued ones written above), so the run cannot tell they are random
    assert m["random_networks"] == [] and len(m["per_asset"]) == 2 and m["tasks"]["reconstruction"]["notes"] == []
    agg = m["tasks"]["reconstruction"]["aggregate"]
    assert np.isfinite(agg["psnr"]) and 0 < agg["ssim"] <= 1 and agg["lpips"] > 0
    assert agg["chamfer"] > 0 and 0 <= agg["f_score"] <= 1 and np.isfinite(agg["psnr_normal"]) and agg["lpips_normal"] > 0
    assert np.isfinite(agg["rf_psnr"]) and 0 < agg["rf_ssim"] <= 1 and agg["rf_lpips"] > 0
    np.testing.assert_allclose(agg["psnr"], np.mean([r["psnr"] for r in m["per_asset"]]))
    np.testing.assert_allclose(agg["psnr_normal"], np.mean([r["psnr_normal"] for r in m["per_asset"]]))
    rows = list(csv.DictReader(open(w / "metrics.csv")))
    assert [r["id"] for r in rows] == [r["id"] for r in m["per_asset"]]
    assert [float(r["psnr_normal"]) for r in rows] == pytest.approx([r["psnr_normal"] for r in m["per_asset"]])
    grid = np.asarray(Image.open(w / "grids" / f"{rows[0]['id']}.png"))
    assert grid.shape == (4 * 64, 5 * 64, 3)  # 4 views x (GT | Gaussians | RF | GT normals | mesh normals)


def test_reconstruction_notes_say_why_columns_are_missing():
    from types import SimpleNamespace

    notes = cli.reconstruction_notes(SimpleNamespace(decoder_mesh=None, decoder_rf=None), [({}, {"surface_points": 1})])
    assert any("no mesh decoder" in n for n in notes) and any("no RF decoder" in n for n in notes)
    notes = cli.reconstruction_notes(SimpleNamespace(decoder_mesh=object(), decoder_rf=object()), [({}, {})])
    assert any("no surface_points" in n for n in notes) and any("no normal renders" in n for n in notes)


@pytest.mark.slow
def test_generation_eval_scores_samples(dataset, weights, tmp_path, capsys):
    w = tmp_path / "w"
    rc = cli.main(["--config", GEN, "--workdir", str(w), f"--config.data={dataset}", f"--config.pipeline={weights}",
                   "--config.num_views=3"])
    out = capsys.readouterr().out
    assert rc == 0 and "| Method | CLIP ↑ | FD_dinov2 ↓" in out and "MEANINGLESS" in out
    m = json.loads((w / "metrics.json").read_text())
    g = m["tasks"]["generation"]
    assert g["kind"] == "image" and g["evaluated"] + len(g["failed"]) == 2
    if g["evaluated"]:
        assert -100 <= g["aggregate"]["clip_score"] <= 100
        assert np.isfinite(g["aggregate"]["fd_dinov2"]) and g["num_features"][1] == 6
        aid = m["per_asset"][0]["id"]
        assert np.asarray(Image.open(w / "grids" / f"{aid}.png")).shape == (3 * 64, 2 * 64, 3)


def test_bad_eval_input_is_one_line(tmp_path, capsys):
    rc = cli.main(["--config", RECON, "--workdir", str(tmp_path / "w"), f"--config.data={tmp_path / 'nope'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(tmp_path / "nope") in err[0]
    rc = cli.main(["--config", RECON, "--workdir", str(tmp_path / "w"), "--config.no_such_key=1"])
    assert rc == 2 and "no_such_key" in capsys.readouterr().err


def test_ground_truth_views_composite_resize_and_limit():
    from trellis_jax.data.schema import pack_pngs
    from trellis_jax.eval.reconstruction import ground_truth_views

    rgba = np.zeros((3, 32, 32, 4), np.uint8)
    rgba[:, 8:24, 8:24] = (255, 0, 0, 255)
    data, offsets = pack_pngs(rgba)
    arrays = {"views_png": data, "views_png_offsets": offsets, "views_extrinsics": np.tile(np.eye(4, dtype=np.float32), (3, 1, 1)),
              "views_intrinsics": np.tile(np.eye(3, dtype=np.float32), (3, 1, 1))}
    gt, ext, intr = ground_truth_views(arrays, 2, 16, (0.0, 1.0, 0.0))
    assert gt.shape == (2, 16, 16, 3) and ext.shape == (2, 4, 4) and intr.shape == (2, 3, 3)
    np.testing.assert_allclose(gt[0, 8, 8], [1, 0, 0], atol=1e-6)   # object
    np.testing.assert_allclose(gt[0, 0, 0], [0, 1, 0], atol=1e-6)   # transparent -> background
    assert ground_truth_views(arrays, -1, 32, (1, 1, 1))[0].shape[0] == 3
    with pytest.raises(ValueError, match="no render views"):
        ground_truth_views({}, 2, 16, (1, 1, 1))


def test_report_table_csv_grid(tmp_path):
    from trellis_jax.eval import report

    rows = [{"id": "a", "psnr": 20.0, "lpips": None}, {"id": "b", "psnr": 30.0, "lpips": 0.5, "extra": 1}]
    agg = report.mean_over_assets(rows, ["psnr", "lpips", "chamfer"])
    assert agg == {"psnr": 25.0, "lpips": 0.5, "chamfer": None}
    table = report.markdown_table(report.RECONSTRUCTION_COLUMNS, [("ours", agg)])
    assert table.splitlines()[0].startswith("| Method | PSNR ↑") and "| ours | 25.00 | – | 0.500 | – |" in table
    report.write_csv(tmp_path / "m.csv", rows)
    got = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert got == [{"id": "a", "psnr": "20.0", "lpips": "", "extra": ""}, {"id": "b", "psnr": "30.0", "lpips": "0.5", "extra": "1"}]
    cols = {"ground_truth": np.zeros((5, 8, 8, 3), np.uint8), "sample": np.full((5, 8, 8, 3), 255, np.uint8)}
    report.write_grid(tmp_path / "g.png", cols, max_views=2)
    g = np.asarray(Image.open(tmp_path / "g.png"))
    assert g.shape == (16, 16, 3) and g[:, :8].max() == 0 and g[:, 8:].min() == 255


@pytest.mark.slow  # ~80 CPU-s: compiling the mesh decoder and FlexiCubes
def test_geometry_from_a_random_mesh_decoder():
    """Chamfer / F-score path: random tiny encoder + mesh decoder on a 3³ voxel block -> FlexiCubes mesh
    -> surface samples, which stay within the block's cubes (±1 voxel), and finite metrics."""
    import jax
    import jax.numpy as jnp

    from experiments.eval.reconstruction import get_config
    from experiments.models.slat_vae import VARIANTS
    from trellis_jax.eval import metrics
    from trellis_jax.eval.reconstruction import SLatAutoencoder, _random
    from trellis_jax.models.registry import build_model

    R = 16
    m = get_config("tiny").models
    enc = build_model("SLatEncoder", dict(m.slat_enc.to_dict(), resolution=R, in_channels=8))
    gs = build_model("SLatGaussianDecoder", dict(m.slat_dec_gs.to_dict(), resolution=R))
    _, cls, args = VARIANTS["tiny_dec_mesh"]
    mesh = build_model(cls, dict(args, resolution=R))
    model = SLatAutoencoder((enc, _random(enc, 0)), (gs, _random(gs, 1)), (mesh, _random(mesh, 2)), R, False)
    coords = np.stack(np.meshgrid(*[np.arange(7, 10)] * 3, indexing="ij"), -1).reshape(-1, 3)
    feats = np.random.default_rng(0).standard_normal((len(coords), 8)).astype(np.float32)
    latent, _ = model.reconstruct(coords, feats)
    pts = model.mesh_points(latent, jax.random.PRNGKey(0), 512)
    assert pts.shape == (512, 3) and np.isfinite(pts).all()
    lo, hi = 6 / R - 0.5, 11 / R - 0.5
    assert (pts >= lo - 1e-5).all() and (pts <= hi + 1e-5).all()
    gt = jnp.asarray(np.random.default_rng(1).uniform(lo, hi, (300, 3)), jnp.float32)
    ones = lambda n: jnp.ones(n, bool)
    cd = float(metrics.chamfer_distance(jnp.asarray(pts), gt, ones(512), ones(300)))
    f = float(metrics.f_score(jnp.asarray(pts), gt, ones(512), ones(300), 0.05))
    assert 0 < cd < 1 and 0 <= f <= 1


class _NoLPIPS:
    def lpips(self, a, b):
        return None


def test_psnr_n_of_a_mesh_against_its_own_normal_renders():
    """geometry_metrics: a mesh scored against normal renders of itself (stored as the records store them)
    gives a very high PSNR-N; the same mesh squashed scores lower; no surface_points -> CD / F-score None."""
    import ml_collections
    import trimesh

    from trellis_jax.data import schema
    from trellis_jax.eval.reconstruction import geometry_metrics, ground_truth_normals, render_normals
    from trellis_jax.render.cameras import orbit_cameras

    mesh = trimesh.creation.icosphere(2, 0.35)
    v, f = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)
    ext, intr = orbit_cameras(np.deg2rad([0, 120, 240]), [0.3, -0.2, 0.6], 2.0, 40.0)
    ext, intr = np.asarray(ext, np.float32), np.asarray(intr, np.float32)
    gt = render_normals(v, f, ext, intr, 32)
    assert gt.shape == (3, 32, 32, 3) and (gt.max(-1) > 0).mean() > 0.15
    png, offsets = schema.pack_normals(gt)
    arrays = {"views_normal_png": png, "views_normal_png_offsets": offsets}
    np.testing.assert_allclose(ground_truth_normals(arrays, -1, 32), gt, atol=0.5 / 255 + 1e-6)
    cfg = ml_collections.ConfigDict(dict(resolution=32, seed=0, surface_points=256, fscore_threshold=0.05))
    same, images = geometry_metrics(v, f, arrays, ext, intr, _NoLPIPS(), cfg)
    squashed, _ = geometry_metrics(v * np.float32([1.0, 1.0, 0.6]), f, arrays, ext, intr, _NoLPIPS(), cfg)
    assert same["psnr_normal"] > 50 and squashed["psnr_normal"] < same["psnr_normal"] - 20
    assert same["chamfer"] is None and same["lpips_normal"] is None and images["normal"].shape == (3, 32, 32, 3)
