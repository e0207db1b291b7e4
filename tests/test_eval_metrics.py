"""Evaluation metrics against brute-force numpy / scipy computations."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import scipy.linalg
from scipy.ndimage import correlate1d
from scipy.spatial.distance import cdist

from trellis_jax.eval import metrics as M
from trellis_jax.eval.surface import sample_surface


def test_psnr_and_ssim_per_image():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (3, 24, 20, 3))
    b = np.clip(a + rng.normal(0, [[[[0.01]]], [[[0.05]]], [[[0.2]]]], a.shape), 0, 1)
    want_psnr = [10 * np.log10(1 / np.mean((a[i] - b[i]) ** 2)) for i in range(3)]
    np.testing.assert_allclose(M.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), want_psnr, rtol=1e-5)

    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    blur = lambda im: correlate1d(correlate1d(im, g, axis=0, mode="constant"), g, axis=1, mode="constant")
    want_ssim = []
    for i in range(3):
        vals = []
        for c in range(3):
            p, q = a[i, ..., c], b[i, ..., c]
            mp, mq = blur(p), blur(q)
            spp, sqq, spq = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
            c1, c2 = 0.01**2, 0.03**2
            vals.append(((2 * mp * mq + c1) * (2 * spq + c2)) / ((mp**2 + mq**2 + c1) * (spp + sqq + c2)))
        want_ssim.append(np.mean(vals))
    got = M.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, want_ssim, rtol=1e-4)
    assert want_ssim[0] > want_ssim[1] > want_ssim[2]


def _point_sets(seed=1):
    rng = np.random.default_rng(seed)
    p = rng.uniform(-0.5, 0.5, (700, 3)).astype(np.float32)
    q = (p[:500] + rng.normal(0, 0.03, (500, 3))).astype(np.float32)
    q = np.concatenate([q, rng.uniform(-0.5, 0.5, (100, 3)).astype(np.float32)])
    pm = np.arange(700) < 650  # padded rows carry far-away garbage that must be ignored
    qm = np.arange(600) < 580
    p[~pm] = 100.0
    q[~qm] = -100.0
    return p, q, pm, qm


def test_chamfer_and_f_score_match_brute_force():
    p, q, pm, qm = _point_sets()
    d = cdist(p[pm].astype(np.float64), q[qm].astype(np.float64))
    dpq, dqp = d.min(1), d.min(0)
    want_cd = 0.5 * (dpq.mean() + dqp.mean())
    args = tuple(map(jnp.asarray, (p, q, pm, qm)))
    np.testing.assert_allclose(jax.jit(M.chamfer_distance)(*args), want_cd, rtol=1e-4)
    for t in (0.02, 0.05, 0.1):
        prec, rec = (dpq < t).mean(), (dqp < t).mean()
        want_f = 2 * prec * rec / (prec + rec)
        np.testing.assert_allclose(M.f_score(*args, threshold=t), want_f, rtol=1e-5)
    np.testing.assert_allclose(M.nearest_distances(args[0], args[1], args[3], chunk=64)[:650], dpq[:650], rtol=1e-3, atol=1e-4)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (400, 16)) @ rng.normal(0, 1, (16, 16))
    y = rng.normal(0.3, 1, (300, 16)) @ rng.normal(0, 1, (16, 16))
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    want = np.sum((mx - my) ** 2) + np.trace(sx + sy - 2 * covmean)
    got = jax.jit(M.frechet_distance)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert abs(float(M.frechet_distance(jnp.asarray(x, jnp.float32), jnp.asarray(x, jnp.float32)))) < 1e-2 * want


def test_kernel_distance_matches_direct_mmd():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (60, 8))
    y = rng.normal(0.5, 1.2, (45, 8))
    k = lambda a, b: (a @ b / 8 + 1.0) ** 3
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    want = sxx + syy - 2 * sxy
    got = jax.jit(M.kernel_distance)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert want > 0.1


def test_clip_score_is_100_cosine():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 12)), rng.normal(size=(5, 12))
    want = 100 * np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(M.clip_score(jnp.asarray(a * 3, jnp.float32), jnp.asarray(b, jnp.float32)), want, rtol=1e-5)


def test_sample_surface_is_area_weighted_and_skips_padding():
    v = jnp.asarray([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 1], [0, 2, 1], [9, 9, 9]], jnp.float32)
    f = jnp.asarray([[0, 1, 2], [0, 3, 4], [5, 5, 5], [0, 1, 5]], jnp.int32)  # areas 0.5, ~3.35..., 0, padded
    mask = jnp.asarray([True, True, True, False])
    pts = np.asarray(sample_surface(jax.random.PRNGKey(0), v, f, mask, 20000))
    on_first = np.abs(pts[:, 2]) < 1e-6  # the first triangle lies in z = 0, the second only touches it at v0
    tri = np.asarray(v)[np.asarray(f)]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert abs(on_first.mean() - areas[0] / (areas[0] + areas[1])) < 0.015
    first = pts[on_first]
    assert (first[:, :2] >= -1e-6).all() and (first[:, 0] + first[:, 1] <= 1 + 1e-5).all()
    assert not (np.linalg.norm(pts - np.array([9, 9, 9]), axis=1) < 1).any()
