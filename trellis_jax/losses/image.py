"""Image reconstruction losses: L1 and SSIM (11×11 Gaussian window, σ = 1.5, C1 = 0.01², C2 = 0.03²).

The reference's L_rec = L1 + 0.2·(1 − SSIM) + 0.2·LPIPS(VGG). LPIPS needs pretrained VGG weights given
by path: `reconstruction_loss` takes the `lpips_fn` that `trellis_jax.losses.lpips.load_lpips_fn` builds
from them, and without one leaves the term out (`load_lpips_fn` prints that it does).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(img: jax.Array, window: jax.Array) -> jax.Array:
    """Separable Gaussian blur of img [B, H, W, C], zero-padded by size//2 (same-size output, as the
    reference's grouped conv with padding size//2)."""
    k = window.shape[0]
    c = img.shape[-1]
    pad = k // 2
    kx = jnp.tile(window.reshape(1, k, 1, 1), (1, 1, 1, c))
    ky = jnp.tile(window.reshape(k, 1, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    out = jax.lax.conv_general_dilated(img, kx, (1, 1), [(0, 0), (pad, pad)], dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(out, ky, (1, 1), [(pad, pad), (0, 0)], dimension_numbers=dn, feature_group_count=c)


def ssim(a: jax.Array, b: jax.Array, window_size: int = 11, sigma: float = 1.5) -> jax.Array:
    """Mean SSIM of images [B, H, W, C] in [0, 1] (zero-padded Gaussian window, as the reference)."""
    w = _gaussian_window(window_size, sigma)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _blur(a, w), _blur(b, w)
    saa = _blur(a * a, w) - mu_a**2
    sbb = _blur(b * b, w) - mu_b**2
    sab = _blur(a * b, w) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return jnp.mean(m)


def absolute(x: jax.Array) -> jax.Array:
    """|x| whose gradient at 0 is 0, as PyTorch's `abs` (the reference's losses), where `jnp.abs`'s is 1:
    at exact ties (a zero-initialised output under an L1 penalty, pixels equal in render and target)
    the term then pulls nowhere instead of pushing every tied value the same way."""
    return x * jnp.sign(x)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(absolute(a - b))


def reconstruction_loss(pred: jax.Array, target: jax.Array, lpips_fn=None, ssim_weight: float = 0.2, lpips_weight: float = 0.2):
    """L1 + 0.2·(1 − SSIM) [+ 0.2·LPIPS]; images [B, H, W, 3] in [0, 1]. Returns (loss, terms dict)."""
    terms = {"l1": l1(pred, target), "ssim": ssim(pred, target)}
    loss = terms["l1"] + ssim_weight * (1 - terms["ssim"])
    if lpips_fn is not None and lpips_weight:
        terms["lpips"] = jnp.mean(lpips_fn(pred * 2 - 1, target * 2 - 1))
        loss = loss + lpips_weight * terms["lpips"]
    return loss, terms
