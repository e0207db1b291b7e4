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
                            height=H, width=W)[:3]


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


def _dense_reference(means, colors, opac, scales, rot, E, K, h, w, bg, kernel=0.1):
    """Every Gaussian at every pixel, front to back (numpy, float64): the reference rasteriser's rules."""
    from trellis_jax.render.gaussian_splatting import ALPHA_MIN, T_MIN

    R, t = E[:3, :3], E[:3, 3]
    cam = means @ R.T + t
    z = cam[:, 2]
    fx, fy, cx, cy = K[0, 0] * w, K[1, 1] * h, K[0, 2] * w, K[1, 2] * h
    u, v = fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy
    rm = np.asarray(quaternion_to_matrix(jnp.asarray(rot)), np.float64)
    cov3 = rm @ (np.square(scales)[:, :, None] * np.swapaxes(rm, -1, -2))
    J = np.zeros((len(means), 2, 3))
    J[:, 0, 0], J[:, 0, 2] = fx / z, -fx * cam[:, 0] / z**2
    J[:, 1, 1], J[:, 1, 2] = fy / z, -fy * cam[:, 1] / z**2
    cov2 = (J @ R) @ cov3 @ np.swapaxes(J @ R, -1, -2) + kernel * np.eye(2)
    inv = np.linalg.inv(cov2)
    rgb, acc, dep = np.zeros((h, w, 3)), np.zeros((h, w)), np.zeros((h, w))
    order = np.argsort(z)
    for i in range(h):
        for j in range(w):
            T = 1.0
            for g in order:
                d = np.array([j + 0.5 - u[g], i + 0.5 - v[g]])
                power = -0.5 * d @ inv[g] @ d
                a = min(0.99, opac[g] * np.exp(power))
                if power > 0 or a < ALPHA_MIN:
                    continue
                if T * (1 - a) < T_MIN:
                    break
                rgb[i, j] += a * T * colors[g]
                acc[i, j] += a * T
                dep[i, j] += a * T * z[g]
                T *= 1 - a
            rgb[i, j] += T * bg
    return rgb, acc, dep


def _scene(n, seed, big=False):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.4, 0.4, (n, 3))
    scales = rng.uniform(0.01, 0.05, (n, 3))
    if big:
        scales[: n // 4] = rng.uniform(0.15, 0.3, (n // 4, 3))  # tens of pixels: many tiles each
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return means, rng.uniform(0, 1, (n, 3)), rng.uniform(0.3, 0.99, n), scales, q


def test_tiled_splatter_matches_a_dense_front_to_back_reference():
    """Large and small, overlapping, rotated Gaussians on a 40×44 image (partial 16-px tiles): the tiled lists
    give the dense per-pixel composite, including Gaussians far wider than a tile."""
    h, w = 40, 44
    Kw = np.array([[1.2, 0, 0.5], [0, 1.3, 0.5], [0, 0, 1]])
    means, colors, opac, scales, q = _scene(24, 0, big=True)
    bg = np.array([0.2, 0.4, 0.6])
    r = render_gaussians(*(jnp.asarray(a, jnp.float32) for a in (means, colors, opac, scales, q)), jnp.ones(24, bool),
                         jnp.asarray(E), jnp.asarray(Kw, jnp.float32), jnp.asarray(bg, jnp.float32), height=h, width=w,
                         tile_size=16)
    want = _dense_reference(means, colors, opac, scales, q, E.astype(np.float64), Kw, h, w, bg)
    assert not bool(r.overflow) and int(r.load[0]) <= 24
    assert want[1].max() > 0.9 and (want[1] > 0.01).mean() > 0.5  # a covered, overlapping image
    for got, ref, name in zip(r[:3], want, ("rgb", "alpha", "depth")):
        np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5, err_msg=name)


def test_tiled_splatter_capacity_overflow_is_reported_only_when_visible():
    """8 wide Gaussians in front of 32 small ones, lists cut at 8: behind opaque fronts the cut changes
    nothing (no overflow); behind translucent ones it is flagged; too small a bin capacity is flagged."""
    n, front = 40, 8
    means = np.zeros((n, 3))
    means[:, 1] = np.concatenate([np.linspace(-0.6, -0.5, front), np.linspace(0.3, 0.5, n - front)])  # camera at y = -2
    scales = np.concatenate([np.full((front, 3), 3.0), np.full((n - front, 3), 0.03)])
    args = lambda opac: (jnp.asarray(means, jnp.float32), jnp.asarray(np.eye(3)[np.arange(n) % 3], jnp.float32),
                         jnp.full((n,), opac), jnp.asarray(scales, jnp.float32), jnp.tile(jnp.array([1.0, 0, 0, 0]), (n, 1)),
                         jnp.ones(n, bool), jnp.asarray(E), jnp.asarray(K), jnp.zeros(3))
    full = render_gaussians(*args(0.99), height=H, width=W)
    cut = render_gaussians(*args(0.99), height=H, width=W, tile_capacity=front)
    assert int(cut.load[0]) == n and not bool(cut.overflow) and not bool(full.overflow)
    np.testing.assert_allclose(np.asarray(cut.rgb), np.asarray(full.rgb), atol=1e-4)
    assert bool(render_gaussians(*args(0.05), height=H, width=W, tile_capacity=front).overflow)
    assert bool(render_gaussians(*args(0.99), height=H, width=W, bin_capacity=n).overflow)


def _dense_jax(means, colors, opac, scales, rot, h, w, kernel=0.1):
    """All Gaussians at all pixels in jnp (differentiable), front to back by a fixed depth order: the same
    piecewise-smooth function as the splatter when no Gaussian reaches 1/255 beyond its 3σ box."""
    from trellis_jax.render.gaussian_splatting import ALPHA_MIN

    R, t = jnp.asarray(E[:3, :3]), jnp.asarray(E[:3, 3])
    cam = means @ R.T + t
    z = cam[:, 2]
    fx, fy, cx, cy = K[0, 0] * w, K[1, 1] * h, K[0, 2] * w, K[1, 2] * h
    u, v = fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy
    rm = quaternion_to_matrix(rot)
    cov3 = rm @ (jnp.square(scales)[:, :, None] * jnp.swapaxes(rm, -1, -2))
    zero = jnp.zeros_like(z)
    J = jnp.stack([jnp.stack([fx / z, zero, -fx * cam[:, 0] / z**2], -1), jnp.stack([zero, fy / z, -fy * cam[:, 1] / z**2], -1)], 1)
    cov2 = (J @ R) @ cov3 @ jnp.swapaxes(J @ R, -1, -2) + kernel * jnp.eye(2)
    inv = jnp.linalg.inv(cov2)
    order = jnp.argsort(jax.lax.stop_gradient(z))
    py, px = np.mgrid[:h, :w] + 0.5
    d = jnp.stack([px[..., None] - u, py[..., None] - v], -1)[..., order, :]  # [h, w, N, 2]
    power = -0.5 * jnp.einsum("hwni,nij,hwnj->hwn", d, inv[order], d)
    a = jnp.minimum(0.99, opac[order] * jnp.exp(power))
    a = jnp.where((power <= 0) & (a >= ALPHA_MIN), a, 0.0)
    trans = jnp.cumprod(jnp.concatenate([jnp.ones((h, w, 1)), 1 - a[..., :-1]], -1), -1)
    return jnp.einsum("hwn,nc->hwc", a * trans, colors[order])


def test_tiled_splatter_gradients_match_a_dense_renderer():
    """Gradients in means, scales, rotations, opacities and colours equal those of the dense renderer
    (opacities < 0.35, so nothing reaches 1/255 outside a 3σ box and the two compute the same function)."""
    means, colors, _, scales, q = _scene(6, 3)
    opac = np.random.default_rng(5).uniform(0.1, 0.34, 6)
    weights = jnp.asarray(np.random.default_rng(4).uniform(size=(H, W, 3)), jnp.float32)
    args = [jnp.asarray(a, jnp.float32) for a in (means, colors, opac, scales, q)]

    def tiled(m, c, o, s, r):
        return jnp.sum(render_gaussians(m, c, o, s, r, jnp.ones(6, bool), jnp.asarray(E), jnp.asarray(K), jnp.zeros(3),
                                        height=H, width=W).rgb * weights)

    dense = lambda m, c, o, s, r: jnp.sum(_dense_jax(m, c, o, s, r, H, W) * weights)
    np.testing.assert_allclose(float(tiled(*args)), float(dense(*args)), rtol=1e-5)
    for name, g, ref in zip(("means", "colors", "opacities", "scales", "rotations"),
                            jax.grad(tiled, argnums=range(5))(*args), jax.grad(dense, argnums=range(5))(*args)):
        assert np.abs(np.asarray(ref)).max() > 1e-3, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-3, atol=1e-4, err_msg=name)
