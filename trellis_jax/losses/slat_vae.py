"""Joint SLat-encoder + Gaussian-decoder objective, trained by differentiable rendering
(docs/reference_facts.md#losses).

One random view per asset is rendered from the decoded Gaussians (pure-JAX splatting) on a random
black or white background and compared with the ground-truth render composited on the same colour:
    L = L1 + 0.2·(1 − SSIM) [+ 0.2·LPIPS] + 1e-6·KL + 1e4·mean(Π scale) + 1e-3·mean((1 − opacity)²)
LPIPS needs pretrained VGG weights (not available offline): the term is left out unless `lpips_fn`
is given, and `metrics['lpips_used']` says which.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from trellis_jax.losses.image import reconstruction_loss
from trellis_jax.losses.vae import gaussian_regularizers, kl_divergence
from trellis_jax.render.gaussian_splatting import render_gaussians, sh_dc_to_rgb
from trellis_jax.sparse.tensor import SparseTensor


def render_batch(g, extrinsics, intrinsics, background, resolution: int):
    """Gaussians [B, N, ...] -> (rgb [B, R, R, 3], overflow bool [B]) (one view per sample)."""
    def one(xyz, f_dc, op, sc, rot, m, E, K, bg):
        r = render_gaussians(xyz, sh_dc_to_rgb(f_dc), op, sc, rot, m, E, K, bg, height=resolution, width=resolution)
        return r.rgb, r.overflow

    return jax.vmap(one)(g.xyz, g.features_dc, g.opacity, g.scaling, g.rotation, g.mask, extrinsics, intrinsics, background)


def render_views(g, extrinsics, intrinsics, background, resolution: int):
    """Gaussians of one sample [1, N, ...] seen from V cameras (extrinsics [V, 4, 4], intrinsics
    [V, 3, 3]) on background [3] -> (rgb [V, R, R, 3], overflow bool [V])."""
    V = extrinsics.shape[0]
    tile = jax.tree.map(lambda x: jnp.broadcast_to(x, (V,) + x.shape[1:]), g)
    return render_batch(tile, extrinsics, intrinsics, jnp.broadcast_to(background, (V, 3)), resolution)


def slat_vae_loss(encoder, decoder, params, batch: dict, rng, kl_weight=1e-6, volume_weight=1e4, opacity_weight=1e-3,
                  ssim_weight=0.2, lpips_weight=0.2, lpips_fn=None):
    """params {'encoder', 'decoder'}; batch: coords [B,L,3], feats [B,L,C], mask [B,L], image [B,R,R,3]
    (straight colour), alpha [B,R,R], extrinsics [B,4,4], intrinsics [B,3,3]. -> (loss, metrics).
    The Gaussians are rendered in float32 whatever the networks' compute dtype."""
    k_post, k_bg = jax.random.split(rng)
    x = SparseTensor(batch["coords"], batch["feats"], batch["mask"], decoder.resolution)
    z, mean, logvar = encoder.apply(params["encoder"], x, sample_posterior=True, rng=k_post)
    g = jax.tree.map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                     decoder.apply(params["decoder"], z))
    B, R = batch["image"].shape[:2]
    bg = jnp.where(jax.random.bernoulli(k_bg, 0.5, (B, 1)), 1.0, 0.0) * jnp.ones((B, 3))
    pred, overflow = render_batch(g, batch["extrinsics"], batch["intrinsics"], bg, R)
    a = batch["alpha"][..., None]
    target = batch["image"] * a + bg[:, None, None, :] * (1 - a)
    rec, terms = reconstruction_loss(pred, target, lpips_fn, ssim_weight=ssim_weight, lpips_weight=lpips_weight)
    kl = kl_divergence(mean.feats.astype(jnp.float32), logvar.feats.astype(jnp.float32), x.mask)
    reg = gaussian_regularizers(g.scaling, g.opacity, g.mask)
    loss = rec + kl_weight * kl + volume_weight * reg["volume"] + opacity_weight * reg["opacity"]
    psnr = -10 * jnp.log10(jnp.mean(jnp.square(pred - target)) + 1e-12)
    return loss, {"rec": rec, "kl": kl, "psnr": psnr, **terms, **reg, "lpips_used": jnp.asarray(lpips_fn is not None),
                  "render_overflow": jnp.mean(overflow.astype(jnp.float32))}
