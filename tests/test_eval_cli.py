"""`trellis-jax eval` end to end on a tiny built dataset (2 procedural assets, 4 stored 64² views) with
random networks: the table, metrics.json, metrics.csv and grids appear and agree with each other; bad
input is one error line."""
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


def test_reconstruction_eval_writes_table_json_csv_grids(dataset, tmp_path, capsys):
    vgg, lin = _lpips_weights(tmp_path)
    w = tmp_path / "w"
    rc = cli.main(["--config", RECON, "--workdir", str(w), f"--config.data={dataset}", "--config.checkpoints.encoder=",
                   "--config.checkpoints.decoder_gs=", f"--config.networks.lpips_backbone={vgg}", f"--config.networks.lpips_linear={lin}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| Method | PSNR ↑ | SSIM ↑ | LPIPS ↓" in out and "MEANINGLESS" in out and "SLat VAE under test" in out
    m = json.loads((w / "metrics.json").read_text())
    assert m["meaningful"] is False and len(m["per_asset"]) == 2
    agg = m["tasks"]["reconstruction"]["aggregate"]
    assert np.isfinite(agg["psnr"]) and 0 < agg["ssim"] <= 1 and agg["lpips"] > 0 and agg["chamfer"] is None
    np.testing.assert_allclose(agg["psnr"], np.mean([r["psnr"] for r in m["per_asset"]]))
    rows = list(csv.DictReader(open(w / "metrics.csv")))
    assert [r["id"] for r in rows] == [r["id"] for r in m["per_asset"]]
    assert [float(r["psnr"]) for r in rows] == pytest.approx([r["psnr"] for r in m["per_asset"]])
    assert rows[0]["chamfer"] == ""  # not computed: empty, never a made-up number
    grid = np.asarray(Image.open(w / "grids" / f"{rows[0]['id']}.png"))
    assert grid.shape == (4 * 64, 2 * 64, 3)  # 4 views x (ground truth | reconstruction)


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
