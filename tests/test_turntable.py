"""Turntable video: the reference's camera path, panels for Gaussians and mesh, mp4 written atomically."""
import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh

from trellis_jax.render.turntable import render_turntable, turntable_cameras, turntable_frames

R = 32


def _gaussians(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "xyz": rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32),
        "features_dc": np.tile(np.array([[1.5, -1.5, -1.5]], np.float32), (n, 1)),  # red after SH DC
        "scaling": np.full((n, 3), 0.03, np.float32),
        "rotation": np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (n, 1)),
        "opacity": np.full((n,), 0.9, np.float32),
    }


def _mesh():
    m = trimesh.creation.icosphere(2, 0.35)
    attrs = np.zeros((len(m.vertices), 6), np.float32)
    attrs[:, 1] = 1.0  # green
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int32), attrs


def _field(res=8, rank=1, dim=2):
    """A 4³-voxel opaque red radiance field at the centre of a res³ grid (one Strivec sample, no batch axis)."""
    import jax.numpy as jnp

    from trellis_jax.representations.strivec import Strivec

    p = np.stack(np.meshgrid(*[np.arange(res // 2 - 2, res // 2 + 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    L = len(p)
    fdc = np.tile(np.array([20.0, -20.0, -20.0], np.float32), (L, rank, 1, 1))
    return Strivec(jnp.asarray((p + 0.5) / res, jnp.float32), jnp.ones((L, rank, 3, dim)), jnp.full((L, rank), 50.0),
                   jnp.asarray(fdc), jnp.ones((L,), bool), resolution=res)


def test_camera_path_is_the_reference_orbit():
    ext, intr = turntable_cameras(5)
    eye = np.linalg.inv(ext)[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(eye, axis=-1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(np.arcsin(eye[:, 2] / 2.0), 0.25 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, 5)), atol=1e-5)
    np.testing.assert_allclose(eye[0], 2.0 * np.array([0.0, np.cos(0.25), np.sin(0.25)]), atol=1e-5)  # yaw 0 on +y
    np.testing.assert_allclose(intr[0, 0, 0], 0.5 / np.tan(np.deg2rad(20.0)), rtol=1e-6)


def test_frames_show_each_representation():
    frames = turntable_frames(gaussians=_gaussians(), mesh=_mesh(), num_frames=2, resolution=R)
    assert frames.shape == (2, R, 3 * R, 3) and frames.dtype == np.uint8
    centre = frames[:, R // 2, R // 2 :: R].astype(int)  # the centre pixel of each panel
    assert (centre[:, 0, 0] > 150).all() and (centre[:, 0, 1:] < 80).all()  # red Gaussians
    assert (centre[:, 1, 1] > 200).all() and (centre[:, 1, [0, 2]] < 30).all()  # green mesh
    assert (centre[:, 2].sum(-1) > 200).all()  # normals facing the camera: a lit normal colour
    assert (frames[:, 0, 0] == 0).all()  # black background in the corners
    with pytest.raises(ValueError):
        turntable_frames()


def test_radiance_field_panel_sits_between_gaussians_and_mesh():
    frames = turntable_frames(gaussians=_gaussians(), mesh=_mesh(), num_frames=2, resolution=R, radiance_field=_field())
    assert frames.shape == (2, R, 4 * R, 3)
    centre = frames[:, R // 2, R // 2 :: R].astype(int)
    assert (centre[:, 1, 0] > 200).all() and (centre[:, 1, 1:] < 30).all()  # the red field, second panel
    assert (centre[:, 2, 1] > 200).all()  # the green mesh after it
    assert (frames[:, 0, R] == 0).all()  # black background around the field


def test_field_views_grow_a_too_small_sample_capacity():
    from trellis_jax.render.turntable import render_field_views

    ext, intr = turntable_cameras(2)
    want = render_field_views(_field(), ext, intr, R, sample_capacity=256)
    got = render_field_views(_field(), ext, intr, R, sample_capacity=2)  # rays cross 4 voxels: overflows, re-renders
    np.testing.assert_array_equal(got, want)


def test_mesh_views_grow_a_too_small_tile_capacity():
    from trellis_jax.render.turntable import render_mesh_views

    ext, intr = turntable_cameras(2)
    want = render_mesh_views(*_mesh(), ext, intr, R)
    got = render_mesh_views(*_mesh(), ext, intr, R, tile_capacity=2)  # overflows, then re-renders
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_video_is_written_atomically_and_reads_back(tmp_path):
    path = render_turntable(tmp_path / "out" / "turntable.mp4", mesh=_mesh()[:2] + (None,), num_frames=5, fps=15, resolution=R)
    assert [p.name for p in path.parent.iterdir()] == ["turntable.mp4"]  # no temporary left behind
    reader = imageio.get_reader(path)
    frames = [f for f in reader]
    assert len(frames) == 5
    assert frames[0].shape == (R, R, 3)  # normals only: the mesh has no colour
    assert reader.get_meta_data()["fps"] == 15
