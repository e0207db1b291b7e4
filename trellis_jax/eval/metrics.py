"""The paper's evaluation metrics as pure, jittable JAX functions (one metric per function).

Images are [B, H, W, 3] in [0, 1]; point sets [N, 3] with a bool mask (padding rows ignored);
features [N, D]. Per-asset metrics return [B]; set-level metrics (FD, KD) return a scalar.

Appearance: `psnr`, `ssim`, `lpips`. Geometry: `chamfer_distance`, `f_score` on surface samples.
Generation: `frechet_distance`, `kernel_distance` on image features, `clip_score` on CLIP embeddings.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.losses import image as image_losses
from trellis_jax.losses.lpips import LPIPS


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio per image [B] (dB) of a, b [B, H, W, C]."""
    mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(max_val**2 / jnp.maximum(mse, 1e-12))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """SSIM per image [B] (the training loss's 11×11 Gaussian-window SSIM, mean over each map)."""
    return jax.vmap(lambda x, y: image_losses.ssim(x[None], y[None]))(a.astype(jnp.float32), b.astype(jnp.float32))


def lpips(params, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS (VGG16, lpips v0.1) per image [B] of a, b in [0, 1]; `params` from `losses.lpips.load_lpips`."""
    return LPIPS().apply(params, a * 2.0 - 1.0, b * 2.0 - 1.0)


def nearest_distances(p: jax.Array, q: jax.Array, q_mask: jax.Array, chunk: int = 1024) -> jax.Array:
    """Euclidean distance from each point of p [N, 3] to its nearest valid point of q [M, 3] -> [N].

    Brute force in chunks of `chunk` rows of p ([chunk, M] distances at a time, static shapes)."""
    n = p.shape[0]
    chunk = min(chunk, n)
    pad = (-n) % chunk
    pp = jnp.pad(p, ((0, pad), (0, 0))).reshape(-1, chunk, p.shape[-1])
    qn = jnp.sum(q * q, -1)

    def block(x):
        d2 = jnp.sum(x * x, -1)[:, None] + qn[None, :] - 2.0 * x @ q.T
        return jnp.min(jnp.where(q_mask[None, :], d2, jnp.inf), axis=-1)

    d2 = jax.lax.map(block, pp).reshape(-1)[:n]
    return jnp.sqrt(jnp.maximum(d2, 0.0))


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def chamfer_distance(p: jax.Array, q: jax.Array, p_mask: jax.Array, q_mask: jax.Array) -> jax.Array:
    """Symmetric Chamfer distance: ½·(mean_p min_q |p − q| + mean_q min_p |q − p|) (Euclidean, not squared)."""
    return 0.5 * (_masked_mean(nearest_distances(p, q, q_mask), p_mask) + _masked_mean(nearest_distances(q, p, p_mask), q_mask))


def f_score(p: jax.Array, q: jax.Array, p_mask: jax.Array, q_mask: jax.Array, threshold: float) -> jax.Array:
    """F-score at `threshold`: harmonic mean of precision (share of p within threshold of q) and recall
    (share of q within threshold of p); p is the prediction, q the ground truth."""
    precision = _masked_mean((nearest_distances(p, q, q_mask) < threshold).astype(jnp.float32), p_mask)
    recall = _masked_mean((nearest_distances(q, p, p_mask) < threshold).astype(jnp.float32), q_mask)
    return 2.0 * precision * recall / jnp.maximum(precision + recall, 1e-12)


def _mean_cov(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.astype(jnp.float32)
    mu = jnp.mean(x, 0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(s: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(s)
    return (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T


def frechet_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Fréchet distance of Gaussians fitted to features x [N, D], y [M, D]:
    |μx − μy|² + tr(Σx + Σy − 2·(Σx Σy)^½).

    tr((Σx Σy)^½) = tr((Σx^½ Σy Σx^½)^½), a symmetric PSD matrix, so both square roots are taken by
    eigendecomposition (negative round-off eigenvalues clipped to 0)."""
    mx, sx = _mean_cov(x)
    my, sy = _mean_cov(y)
    rx = _psd_sqrt(sx)
    m = rx @ sy @ rx
    tr_cross = jnp.sum(jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(0.5 * (m + m.T)), 0.0)))
    return jnp.sum(jnp.square(mx - my)) + jnp.trace(sx) + jnp.trace(sy) - 2.0 * tr_cross


def kernel_distance(x: jax.Array, y: jax.Array, degree: int = 3, coef0: float = 1.0) -> jax.Array:
    """Kernel (Inception-style KID) distance: unbiased MMD² of x [N, D], y [M, D] under the polynomial
    kernel k(a, b) = (a·b / D + coef0)^degree, over the whole sets (no subset averaging)."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + coef0) ** degree
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)


def clip_score(a: jax.Array, b: jax.Array) -> jax.Array:
    """CLIP score per pair [B]: 100 · cos(a, b) of embeddings [B, D] (image–text or image–image)."""
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    return 100.0 * jnp.sum(a * b, -1)
