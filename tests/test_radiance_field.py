"""Strivec volume renderer: against an independent per-voxel numpy ray-marcher (the reference kernel's
traversal), gradients by finite differences, capacity overflow and padding voxels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.render.cameras import orbit_cameras
from trellis_jax.render.radiance_field import SH_C0, render_radiance_field
from trellis_jax.representations.strivec import Strivec

RES, RANK, DIM, H, W = 4, 3, 4, 10, 12


def _field(seed=0, n_active=28, n_pad=4):
    g = np.random.default_rng(seed)
    cells = g.choice(RES**3, n_active, replace=False)
    ijk = np.stack(np.unravel_index(cells, (RES,) * 3), -1)
    L = n_active + n_pad
    coords = np.concatenate([ijk, np.zeros((n_pad, 3), int)])  # padding rows sit on voxel (0,0,0)
    mask = np.arange(L) < n_active
    return dict(position=((coords + 0.5) / RES).astype(np.float32),
                trivec=(1.0 + 0.4 * g.standard_normal((L, RANK, 3, DIM))).astype(np.float32),
                density=g.uniform(-2, 25, (L, RANK)).astype(np.float32),
                features_dc=g.standard_normal((L, RANK, 1, 3)).astype(np.float32),
                mask=mask)


def _strivec(f):
    return Strivec(jnp.asarray(f["position"]), jnp.asarray(f["trivec"]), jnp.asarray(f["density"]),
                   jnp.asarray(f["features_dc"]), jnp.asarray(f["mask"]), RES)


def _softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def _numpy_render(f, E, K, bg, jitter):
    """Per pixel: intersect the ray with every active voxel box, visit the voxels by entry distance and
    march each one's own lattice samples (z = (t + jitter)·step inside [entry, exit]), as diffoctreerast."""
    step = 0.5 / DIM / RES
    R, t = E[:3, :3].astype(np.float64), E[:3, 3].astype(np.float64)
    origin = -R.T @ t + 0.5
    rgb, depth, alpha = np.zeros((H, W, 3)), np.zeros((H, W)), np.zeros((H, W))
    active = np.flatnonzero(f["mask"])
    lo_all = np.floor(f["position"][active] * RES) / RES
    for i in range(H):
        for j in range(W):
            d_cam = np.array([((j + 0.5) / W - K[0, 2]) / K[0, 0], ((i + 0.5) / H - K[1, 2]) / K[1, 1], 1.0])
            d = R.T @ d_cam / np.linalg.norm(d_cam)
            hits = []
            for v, lo in zip(active, lo_all):
                with np.errstate(divide="ignore"):
                    ta, tb = (lo - origin) / d, (lo + 1.0 / RES - origin) / d
                a, b = np.max(np.minimum(ta, tb)), np.min(np.maximum(ta, tb))
                if b > a:
                    hits.append((a, b, v, lo))
            T, C, D = 1.0, np.zeros(3), 0.0
            for a, b, v, lo in sorted(hits, key=lambda h: h[0]):
                for k in range(int(np.ceil(a / step - jitter)), int(np.floor(b / step - jitter)) + 1):
                    z = (k + jitter) * step
                    local = ((origin + z * d) - lo) * RES
                    u = local * DIM - 0.5
                    i0 = np.clip(np.floor(u), 0, DIM - 2).astype(int)
                    wr = np.ones(RANK)
                    for r in range(RANK):
                        for ax in range(3):
                            e0, e1 = f["trivec"][v, r, ax, i0[ax]], f["trivec"][v, r, ax, i0[ax] + 1]
                            wr[r] *= e0 + (e1 - e0) * (u[ax] - i0[ax])
                    sigma = _softplus(float(np.sum(f["density"][v] * wr)))
                    col = 1 / (1 + np.exp(-SH_C0 * (wr @ f["features_dc"][v, :, 0, :])))
                    al = min(1 - np.exp(-sigma * step), 0.999)
                    C += col * al * T
                    D += z * al * T
                    T *= 1 - al
                    if T < 1e-3:
                        break
                if T < 1e-3:
                    break
            rgb[i, j] = C + T * bg
            depth[i, j] = D / np.linalg.norm(d_cam)
            alpha[i, j] = 1 - T
    return rgb, depth, alpha


@pytest.mark.parametrize("jitter", [0.0, 0.37])
def test_matches_numpy_marcher(jitter):
    f = _field()
    E, K = orbit_cameras(np.deg2rad([30.0]), [0.4], 1.6, 40.0)
    bg = np.array([0.2, 0.5, 1.0], np.float32)
    out = render_radiance_field(_strivec(f), jnp.asarray(E[0]), jnp.asarray(K[0]), jnp.asarray(bg), height=H, width=W,
                                jitter=jitter, sample_capacity=256, ray_chunk=32)  # 120 rays: 4 chunks, padded
    rgb, depth, alpha = _numpy_render(f, E[0], K[0], bg, jitter)
    assert not bool(out.overflow)
    assert 0.2 < alpha.mean() < 0.95 and alpha.max() > 0.99  # a non-trivial scene: some rays stop early
    np.testing.assert_allclose(np.asarray(out.alpha), alpha, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out.rgb), rgb, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out.depth), depth, atol=5e-4)


def test_overflow_reported():
    """`overflow` is set exactly when the capacity cut could change the picture: a translucent scene
    overflows one sample short of what its longest ray holds; in an opaque scene rays stop early, so
    smaller capacities are exact and not flagged; and whenever a render is not flagged it equals the
    uncut one."""
    E, K = orbit_cameras(np.deg2rad([30.0]), [0.4], 1.6, 40.0)
    kw = dict(height=H, width=W, ray_chunk=64)
    render = lambda field, cap: render_radiance_field(field, jnp.asarray(E[0]), jnp.asarray(K[0]), jnp.zeros(3),
                                                      sample_capacity=cap, **kw)
    f = _field()
    thin = dict(f, density=f["density"] * 0.02)
    for scene, opaque in ((f, True), (thin, False)):
        field = _strivec(scene)
        full = render(field, 256)
        need = int(full.max_samples)
        assert not bool(full.overflow) and need < 256
        flagged = []
        for cap in (need // 8, need // 4, need // 2, need - 1, need):
            cut = render(field, cap)
            flagged.append(bool(cut.overflow))
            if not cut.overflow:
                np.testing.assert_allclose(np.asarray(cut.rgb), np.asarray(full.rgb), atol=1e-6)
        assert flagged[-1] is False
        if opaque:
            assert not all(flagged[:-1])  # some capacity under the occupied count is already exact
        else:
            assert flagged[-2] is True    # translucent: every occupied sample counts


def test_gradient_matches_finite_differences():
    f = _field(seed=1, n_active=12)
    f["density"] *= 0.3  # semi-transparent: every sample matters
    E, K = orbit_cameras(np.deg2rad([75.0]), [0.3], 1.6, 40.0)
    cam = (jnp.asarray(E[0]), jnp.asarray(K[0]), jnp.full(3, 0.3))
    wts = jax.random.uniform(jax.random.PRNGKey(0), (H, W, 5))

    def loss(trivec, density, fdc):
        field = Strivec(jnp.asarray(f["position"]), trivec, density, fdc, jnp.asarray(f["mask"]), RES)
        o = render_radiance_field(field, *cam, height=H, width=W, sample_capacity=128, ray_chunk=64)
        return jnp.sum(o.rgb * wts[..., :3]) + jnp.sum(o.depth * wts[..., 3]) + jnp.sum(o.alpha * wts[..., 4])

    x = [jnp.asarray(f[k]) for k in ("trivec", "density", "features_dc")]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*x)
    loss = jax.jit(loss)
    assert all(float(jnp.abs(g).max()) > 0 for g in grads)
    assert float(jnp.abs(grads[0][~f["mask"]]).max()) == 0.0  # padding voxels get no gradient
    g = np.random.default_rng(2)
    for i in range(3):
        direction = [jnp.zeros_like(v) for v in x]
        direction[i] = jnp.asarray(g.standard_normal(x[i].shape), jnp.float32)
        eps = 1e-2
        plus = loss(*[v + eps * dv for v, dv in zip(x, direction)])
        minus = loss(*[v - eps * dv for v, dv in zip(x, direction)])
        fd = float(plus - minus) / (2 * eps)
        an = float(jnp.sum(grads[i] * direction[i]))
        assert abs(fd - an) <= 2e-2 * abs(an) + 1e-3, (i, fd, an)
