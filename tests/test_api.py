"""The reference-style Python API (trellis_jax.api) over the tiny random pipeline."""
import numpy as np
import pytest
import trimesh

from trellis_jax.api import MeshResult, TrellisImageTo3DPipeline, TrellisTextTo3DPipeline, render_video, save_ply, to_glb
from trellis_jax.export.gaussian_ply import read_gaussian_ply


def test_run_matches_the_jitted_sampler_and_exports(weights, prompt, tmp_path):
    from PIL import Image

    pipe = TrellisImageTo3DPipeline.from_pretrained(weights, capacity=2048)
    params = dict(sparse_structure_sampler_params={"steps": 2, "cfg_strength": 2.0}, slat_sampler_params={"steps": 2})
    out = pipe.run(prompt, num_samples=2, seed=5, **params)
    assert list(out) == ["gaussian"] and len(out["gaussian"]) == 2
    # the same computation as the pipeline's own call with those settings and seeds 5, 6
    variant = pipe._variant(params["sparse_structure_sampler_params"], params["slat_sampler_params"], None)
    assert variant.ss_sampler.cfg_strength == 2.0 and variant.slat_sampler.steps == 2
    cond = np.repeat(np.asarray(pipe.cond_model([Image.open(prompt)])), 2, 0)
    direct = variant.sample(cond, pipe.cond_model.negative(2), np.array([5, 6]))["gaussian"].sample(1)
    for k, v in direct.items():
        np.testing.assert_allclose(out["gaussian"][1][k], v, rtol=1e-6, atol=1e-6)
    again = pipe.run(prompt, num_samples=2, seed=5, **params)
    assert len(pipe._variants) == 1  # a repeated setting reuses its pipeline object (no recompile)
    np.testing.assert_array_equal(again["gaussian"][0]["xyz"], out["gaussian"][0]["xyz"])

    path = save_ply(out["gaussian"][0], tmp_path / "a.ply")
    np.testing.assert_allclose(read_gaussian_ply(path)["xyz"], out["gaussian"][0]["xyz"], atol=1e-6)
    frames = render_video(out["gaussian"][0], num_frames=3, resolution=32)["color"]
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8 and frames.std() > 0


def test_bad_settings_are_one_clear_error(weights, prompt):
    pipe = TrellisImageTo3DPipeline.from_pretrained(weights, capacity=2048)
    with pytest.raises(ValueError, match=r"slat_sampler_params: unknown parameter\(s\) \['stpes'\]"):
        pipe.run(prompt, slat_sampler_params={"stpes": 2})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pipe.run(prompt, sparse_structure_sampler_params={"steps": 0})
    with pytest.raises(ValueError, match=r"format\(s\) \['mesh'\] not loaded"):
        pipe.run(prompt, formats=["mesh"])
    with pytest.raises(ValueError, match="image-conditioned pipeline; use TrellisImageTo3DPipeline"):
        TrellisTextTo3DPipeline.from_pretrained(weights)
    with pytest.raises(ValueError, match="no decoder for format"):
        TrellisImageTo3DPipeline.from_pretrained(weights, formats=["radiance_field"])


def test_to_glb_and_mesh_video(tmp_path):
    vertices = np.array([[0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]], np.float32) - 0.1
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    attrs = np.concatenate([np.eye(4)[:, :3], np.full((4, 3), 0.5)], 1).astype(np.float32)
    mesh = MeshResult(vertices, faces, attrs)
    path = to_glb(None, mesh, simplify=0.0).export(tmp_path / "m.glb")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == 4 and loaded.visual.vertex_colors[:, :3].max() == 255
    video = render_video(mesh, num_frames=2, resolution=32)
    assert set(video) == {"color", "normal"} and video["normal"].shape == (2, 32, 32, 3)
    with pytest.raises(TypeError, match="Gaussian sample"):
        render_video(np.zeros(3))
