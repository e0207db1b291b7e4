"""Pure-JAX Gaussian splatting renderer and the PLY/GLB exporters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from trellis_jax.export.gaussian_ply import read_gaussian_ply, save_gaussian_ply
from trellis_jax.export.voxels import save_voxel_glb, save_voxel_ply
from trellis_jax.render.cameras import look_at, orbit_cameras
from trellis_jax.render.gaussian_splatting import quaternion_to_matrix, render_gaussians

H = W = 32
E = look_at(np.array([0.0, -2.0, 0.0]))  # looking along +y, z up
K = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], np.float32)


def _render(means, colors, opac, scales, valid=None):
    n = len(means)
    valid = jnp.ones(n, bool) if valid is None else valid
    rot = jnp.tile(jnp.array([1.0, 0, 0, 0]), (n, 1))
    return render_gaussians(jnp.asarray(means, jnp.float32), jnp.asarray(colors, jnp.float32), jnp.asarray(opac, jnp.float32),
                            jnp.asarray(scales, jnp.float32), rot, valid, jnp.asarray(E), jnp.asarray(K), jnp.zeros(3),
                            height=H, width=W)


def test_camera_conventions():
    p_cam = E[:3, :3] @ np.array([0.0, 0.0, 0.0]) + E[:3, 3]
    np.testing.assert_allclose(p_cam, [0, 0, 2], atol=1e-6)  # origin straight ahead at depth 2
    up_cam = E[:3, :3] @ np.array([0, 0, 1.0])
    assert up_cam[1] < -0.99  # world up is image up (OpenCV y down)
    ext, intr = orbit_cameras([0.0], [0.0])
    np.testing.assert_allclose(np.linalg.inv(ext[0])[:3, 3], [0, 2, 0], atol=1e-6)


def test_single_gaussian_peak_alpha_and_position():
    rgb, alpha, depth = _render([[0, 0, 0]], [[1, 0, 0]], [0.5], [[0.02, 0.02, 0.02]])
    # projected centre is at pixel coordinate 15.5 (between 4 pixels): check symmetry and peak value
    a = np.asarray(alpha)
    np.testing.assert_allclose(a[15, 15], a[16, 16], rtol=1e-5)
    sigma_px = 0.02 * W / 2  # fx = 1·W, depth 2
    var = sigma_px**2 + 0.1
    np.testing.assert_allclose(a[15, 15], 0.5 * np.exp(-0.5 * (0.25 + 0.25) / var), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(depth)[15, 15] / a[15, 15], 2.0, rtol=1e-5)
    assert np.asarray(rgb)[15, 15, 0] > 0 and np.asarray(rgb)[15, 15, 1] == 0


def test_front_to_back_compositing_and_invalid_gaussians():
    means = [[0, -0.5, 0], [0, 0.5, 0]]  # first is nearer the camera (camera at y = -2)
    rgb, alpha, _ = _render(means, [[1, 0, 0], [0, 1, 0]], [0.9, 0.9], [[0.05] * 3] * 2)
    c = np.asarray(rgb)[15, 15]
    assert c[0] > c[1] > 0
    rgb2, _, _ = _render(means, [[1, 0, 0], [0, 1, 0]], [0.9, 0.9], [[0.05] * 3] * 2, valid=jnp.array([False, True]))
    assert np.asarray(rgb2)[15, 15, 0] == 0


def test_renderer_is_differentiable():
    def loss(colors, opac):
        rgb, _, _ = _render([[0, 0, 0], [0.05, 0.2, 0.0]], colors, opac, [[0.03] * 3] * 2)
        return jnp.sum(rgb)

    g = jax.grad(loss, argnums=(0, 1))(jnp.ones((2, 3)), jnp.full(2, 0.5))
    assert all(np.isfinite(np.asarray(x)).all() for x in g)
    assert np.asarray(g[0]).sum() > 0


def test_gaussian_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1])
    attrs = dict(xyz=rng.uniform(-0.5, 0.5, (n, 3)), features_dc=rng.normal(size=(n, 3)),
                 opacity=rng.uniform(0.05, 0.95, n), scaling=rng.uniform(1e-3, 0.05, (n, 3)), rotation=q)
    path = save_gaussian_ply(tmp_path / "g.ply", **attrs)
    header = path.read_bytes()[:400].decode("ascii", "ignore")
    assert "element vertex 50" in header and "property float rot_3" in header
    back = read_gaussian_ply(path)
    for k, v in attrs.items():
        np.testing.assert_allclose(back[k], v, atol=2e-5, err_msg=k)
    # z-up -> y-up: stored y is -z
    raw = np.frombuffer(path.read_bytes()[path.read_bytes().index(b"end_header\n") + 11:], "<f4").reshape(n, 17)
    np.testing.assert_allclose(raw[:, 1], -attrs["xyz"][:, 2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(np.asarray(quaternion_to_matrix(jnp.asarray(q)))), 1, atol=1e-5)


def test_voxel_exports(tmp_path):
    coords = np.array([[0, 0, 0], [63, 63, 63], [10, 20, 30]])
    ply = trimesh.load(save_voxel_ply(tmp_path / "v.ply", coords))
    np.testing.assert_allclose(np.asarray(ply.vertices)[0], [-0.5 + 0.5 / 64] * 3, atol=1e-6)
    glb = trimesh.load(save_voxel_glb(tmp_path / "v.glb", coords, colors=np.ones((3, 3))))
    assert len(glb.geometry) == 1 and next(iter(glb.geometry.values())).faces.shape[0] == 36
    with pytest.raises(ValueError, match="empty"):
        save_voxel_ply(tmp_path / "e.ply", np.zeros((0, 3)))
