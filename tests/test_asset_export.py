"""Per-asset files of a pipeline with Gaussian and mesh decoders: textured mesh.glb, gaussians.ply,
turntable.mp4 (Gaussians, mesh colour, mesh normals), from `generate` and from `export`."""
import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh

from trellis_jax import cli
from trellis_jax.export.gaussian_ply import read_gaussian_ply

SMALL = ("--texture-size", "64", "--bake-views", "8", "--bake-resolution", "64", "--video-frames", "6",
         "--video-resolution", "48")


@pytest.fixture(scope="module")
def mesh_weights(tmp_path_factory):
    from trellis_jax.sampling.random_pipeline import write_random_pipeline

    return write_random_pipeline(tmp_path_factory.mktemp("pipe") / "weights", steps=2, occupancy=0.02, mesh=True)


def _check_asset(d):
    glb = trimesh.load(d / "mesh.glb", force="mesh")
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals)
    assert glb.visual.material.baseColorTexture.size == (64, 64)
    assert glb.visual.uv.min() >= 0 and glb.visual.uv.max() <= 1 and len(glb.faces) > 0
    assert len(read_gaussian_ply(d / "gaussians.ply")["xyz"]) > 0
    video = imageio.get_reader(d / "turntable.mp4")
    assert video.count_frames() == 6 and video.get_data(0).shape == (48, 3 * 48, 3)  # Gaussians | mesh colour | normals
    return glb


@pytest.mark.slow
def test_generate_and_export_write_textured_glb_and_video(mesh_weights, prompt, tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli.main(["generate", "--weights", str(mesh_weights), "--image", str(prompt), "--capacity", "2048",
                     "--out", str(out), *SMALL]) == 0
    assert "mesh.glb textured from the Gaussians (fast bake" in capsys.readouterr().err
    d = out / "sample_00_seed0"
    first = _check_asset(d)
    assert cli.main(["export", "--weights", str(mesh_weights), "--latents", str(d / "latents.npz"), "--out", str(tmp_path / "exp"),
                     "--bake-mode", "opt", "--bake-steps", "20", *SMALL]) == 0
    again = _check_asset(tmp_path / "exp")
    assert abs(len(again.faces) - len(first.faces)) <= 0.05 * len(first.faces)  # same latents, same mesh
