"""CLI end to end on a random-weight pipeline directory: generate -> files, export, edit, convert."""
import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh
from PIL import Image

from trellis_jax import cli
from trellis_jax.export.gaussian_ply import read_gaussian_ply


SMALL_VIDEO = ("--video-frames", "8", "--video-resolution", "64")  # the defaults (120 frames, 512²) cost minutes on a CPU


@pytest.fixture(scope="module")
def generated(weights, prompt, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    rc = cli.main(["generate", "--weights", str(weights), "--image", str(prompt), str(prompt), "--seed", "3", "7",
                   "--capacity", "4096", "--out", str(out), *SMALL_VIDEO])
    return rc, out


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("demo", "generate", "edit", "build-data", "train", "export", "convert"):
        assert cmd in text
    assert cli.main(["nope"]) == 2


def test_generate_writes_every_output_file(generated, capsys):
    rc, out = generated
    assert rc == 0
    dirs = sorted(out.glob("sample_*"))
    assert [d.name for d in dirs] == ["sample_00_seed3", "sample_01_seed7"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]  # nothing left half-written
    for d in dirs:
        for f in ("gaussians.ply", "voxels.ply", "voxels.glb", "preview.png", "turntable.mp4", "latents.npz"):
            assert (d / f).stat().st_size > 0, f
        assert not (d / "mesh.glb").exists()  # this pipeline has no mesh decoder
        video = imageio.get_reader(d / "turntable.mp4")
        assert video.count_frames() == 8 and video.get_data(0).shape == (64, 64, 3)  # Gaussians only
        g = read_gaussian_ply(d / "gaussians.ply")
        z = np.load(d / "latents.npz")
        assert len(g["xyz"]) == 4 * len(z["coords"]) and z["ss_latent"].shape == (8, 8, 8, 8)
        assert np.all(np.abs(g["xyz"]) <= 0.5 + 1.5 / 32)
        assert Image.open(d / "preview.png").size == (384, 384)
        assert len(trimesh.load(d / "voxels.ply").vertices) == len(z["coords"])


def test_export_and_edit_round_trip(weights, prompt, generated, tmp_path):
    _, out = generated
    asset = out / "sample_00_seed3" / "latents.npz"
    assert cli.main(["export", "--weights", str(weights), "--latents", str(asset), "--out", str(tmp_path / "exp"), *SMALL_VIDEO]) == 0
    a = read_gaussian_ply(out / "sample_00_seed3" / "gaussians.ply")
    b = read_gaussian_ply(tmp_path / "exp" / "gaussians.ply")
    np.testing.assert_allclose(a["xyz"], b["xyz"], atol=1e-5)
    assert cli.main(["edit", "variation", "--weights", str(weights), "--asset", str(asset), "--image", str(prompt),
                     "--capacity", "4096", "--out", str(tmp_path / "var"), *SMALL_VIDEO]) == 0
    v = np.load(tmp_path / "var" / "latents.npz")
    np.testing.assert_array_equal(v["coords"], np.load(asset)["coords"])
    assert cli.main(["edit", "region", "--weights", str(weights), "--asset", str(asset), "--image", str(prompt),
                     "--box", "0", "0", "0", "16", "32", "32", "--capacity", "4096", "--out", str(tmp_path / "reg"), *SMALL_VIDEO]) == 0
    r = np.load(tmp_path / "reg" / "latents.npz")
    old = {tuple(c) for c in np.load(asset)["coords"] if c[0] >= 16}
    assert old == {tuple(c) for c in r["coords"] if c[0] >= 16}


def test_bad_inputs_give_clear_errors(weights, tmp_path, capsys):
    assert cli.main(["generate", "--weights", str(tmp_path / "missing")]) == 2
    assert "pipeline.json" in capsys.readouterr().err
    assert cli.main(["generate", "--weights", str(weights), "--text", "a chair"]) == 2
    assert "give --image" in capsys.readouterr().err
    np.savez(tmp_path / "empty.npz", coords=np.zeros((0, 3), np.uint8), feats=np.zeros((0, 8), np.float32))
    assert cli.main(["export", "--weights", str(weights), "--latents", str(tmp_path / "empty.npz"), "--out", str(tmp_path / "e")]) == 2
    assert "empty voxel set" in capsys.readouterr().err


def test_convert_checks_and_resaves(weights, tmp_path, capsys):
    assert cli.main(["convert", "check", str(weights / "ckpts" / "slat_flow")]) == 0
    assert "SLatFlowModel" in capsys.readouterr().out
    assert cli.main(["convert", "resave", str(weights / "ckpts" / "ss_dec"), str(tmp_path / "ss_dec")]) == 0
    assert (tmp_path / "ss_dec.safetensors").read_bytes() == (weights / "ckpts" / "ss_dec.safetensors").read_bytes()
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["convert", "check", str(tmp_path / "bad")]) == 2
    assert "invalid JSON" in capsys.readouterr().err
