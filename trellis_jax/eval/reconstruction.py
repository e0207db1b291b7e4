"""Reconstruction fidelity of the SLat VAE on held-out records (the paper's Table 1 protocol).

Per record of a `build-data` dataset: SLat encoder (posterior mean) -> Gaussian decoder -> render at the
record's stored views (its cameras, `cfg.num_views` of them, at `cfg.resolution`) on `cfg.background`
-> PSNR / SSIM / LPIPS against the ground-truth renders composited on the same background. With a mesh
decoder and records that carry `surface_points`, the decoded mesh's surface samples give Chamfer
distance and F-score at `cfg.fscore_threshold`; otherwise those columns are reported as not computed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trellis_jax.eval import metrics
from trellis_jax.eval.surface import sample_surface
from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.render.preview import render_gaussian_views
from trellis_jax.sparse.tensor import SparseTensor

MIN_BUCKET = 1024  # voxel rows are padded to a power of two >= this: few compiled shapes


def ground_truth_views(arrays: dict, num_views: int, resolution: int, background) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A record's first `num_views` stored renders composited on `background` -> (rgb f32 [V, R, R, 3]
    in [0, 1], extrinsics [V, 4, 4], intrinsics [V, 3, 3]). Raises ValueError when it stores none."""
    from trellis_jax.data.schema import unpack_png

    offsets = arrays.get("views_png_offsets")
    n = 0 if offsets is None else len(offsets) - 1
    if n <= 0:
        raise ValueError("the record stores no render views (build it with store_views > 0)")
    v = n if num_views < 0 else min(num_views, n)
    images = []
    for i in range(v):
        rgba = unpack_png(arrays["views_png"], offsets, i)
        if rgba.shape[0] != resolution:
            rgba = np.asarray(Image.fromarray(rgba).resize((resolution, resolution), Image.Resampling.LANCZOS))
        x = rgba.astype(np.float32) / 255.0
        images.append(x[..., :3] * x[..., 3:] + np.asarray(background, np.float32) * (1 - x[..., 3:]))
    return np.stack(images), np.asarray(arrays["views_extrinsics"][:v], np.float32), np.asarray(arrays["views_intrinsics"][:v], np.float32)


def _bucket(n: int) -> int:
    return max(MIN_BUCKET, 1 << int(np.ceil(np.log2(max(n, 1)))))


@dataclasses.dataclass
class SLatAutoencoder:
    """The networks under test: encoder, Gaussian decoder, optional mesh decoder (module, params) pairs."""

    encoder: tuple
    decoder_gs: tuple
    decoder_mesh: Optional[tuple]
    resolution: int
    pretrained: bool

    @functools.cached_property
    def _encode_decode(self):
        enc, dec = self.encoder[0], self.decoder_gs[0]
        R = self.resolution

        def run(pe, pd, coords, feats, mask):
            x = SparseTensor(coords, feats, mask, R)
            mean = enc.apply(pe, x, sample_posterior=False)[1]
            return mean, dec.apply(pd, mean)

        return jax.jit(run)

    def reconstruct(self, coords: np.ndarray, feats: np.ndarray):
        """coords [L, 3], feats [L, C] -> (latent SparseTensor [1, Lp, 8], Gaussians of batch 1)."""
        L, Lp = len(coords), _bucket(len(coords))
        c = np.zeros((1, Lp, 3), np.int32)
        f = np.zeros((1, Lp, feats.shape[1]), np.float32)
        c[0, :L], f[0, :L] = coords, feats
        mask = jnp.asarray(np.arange(Lp)[None] < L)
        return self._encode_decode(self.encoder[1], self.decoder_gs[1], jnp.asarray(c), jnp.asarray(f), mask)

    def mesh_points(self, latent, key, num_points: int) -> Optional[np.ndarray]:
        """Surface samples [num_points, 3] of the decoded mesh (FlexiCubes, capacities grown until nothing
        overflows), or None without a mesh decoder. An empty mesh is a ValueError."""
        from trellis_jax.representations.mesh.extract import extract_mesh_arrays

        if self.decoder_mesh is None:
            return None
        params = self.decoder_mesh[1]
        vertices, faces, _ = extract_mesh_arrays(self._decode_mesh(params, latent))[0]
        if len(faces) == 0:
            raise ValueError("the decoded mesh is empty")
        return np.asarray(sample_surface(key, jnp.asarray(vertices), jnp.asarray(faces), jnp.ones(len(faces), bool), num_points))

    @functools.cached_property
    def _decode_mesh(self):
        return jax.jit(self.decoder_mesh[0].apply)


def _random(module, seed: int):
    return nn.meta.unbox(module.init(jax.random.PRNGKey(seed), *dummy_inputs(module)))


def load_autoencoder(cfg, resolution: int, feature_channels: int, log=print) -> SLatAutoencoder:
    """From `cfg.checkpoints` (official-layout prefixes) or, when none is given, random networks of the
    `cfg.models` architectures at the dataset's resolution / feature width (figures then meaningless)."""
    from trellis_jax.checkpoints import load_model

    ck = cfg.checkpoints
    if bool(ck.encoder) != bool(ck.decoder_gs):
        raise ValueError("checkpoints.encoder and checkpoints.decoder_gs must be given together")
    if ck.encoder:
        enc, dec = load_model(ck.encoder), load_model(ck.decoder_gs)
        mesh = load_model(ck.decoder_mesh) if ck.decoder_mesh else None
        if enc[0].in_channels != feature_channels:
            raise ValueError(f"{ck.encoder}: the encoder takes {enc[0].in_channels}-channel features, the dataset has {feature_channels}")
        return SLatAutoencoder(enc, dec, mesh, resolution, True)
    log("SLat VAE: no checkpoints given -> RANDOM encoder and Gaussian decoder")
    m = cfg.models
    enc = build_model("SLatEncoder", dict(m.slat_enc.to_dict(), resolution=resolution, in_channels=feature_channels))
    dec = build_model("SLatGaussianDecoder", dict(m.slat_dec_gs.to_dict(), resolution=resolution))
    return SLatAutoencoder((enc, _random(enc, cfg.seed)), (dec, _random(dec, cfg.seed + 1)), None, resolution, False)


def evaluate_asset(model: SLatAutoencoder, extractors, meta: dict, arrays: dict, cfg) -> tuple[dict, dict]:
    """One record -> (metrics row, images {'ground_truth', 'reconstruction'} uint8 [V, R, R, 3])."""
    gt, ext, intr = ground_truth_views(arrays, cfg.num_views, cfg.resolution, cfg.background)
    latent, g = model.reconstruct(np.asarray(arrays["coords"], np.int32), np.asarray(arrays["features"], np.float32))
    host = g.sample(0)
    if not all(np.isfinite(v).all() for v in host.values()):
        raise ValueError("the decoded Gaussians hold NaN/Inf values")
    rec = render_gaussian_views(host, ext, intr, cfg.resolution, tuple(cfg.background))
    rec_f = rec.astype(np.float32) / 255.0
    row = {"id": meta["id"], "views": len(gt),
           "psnr": float(np.mean(metrics.psnr(jnp.asarray(rec_f), jnp.asarray(gt)))),
           "ssim": float(np.mean(metrics.ssim(jnp.asarray(rec_f), jnp.asarray(gt))))}
    lp = extractors.lpips(rec_f, gt)
    row["lpips"] = None if lp is None else float(np.mean(lp))
    row["chamfer"] = row["f_score"] = None
    gt_points = arrays.get("surface_points")
    if model.decoder_mesh is not None and gt_points is not None:
        key = jax.random.PRNGKey(cfg.seed)
        pred = model.mesh_points(latent, key, cfg.surface_points)
        q = jnp.asarray(gt_points, jnp.float32)
        p = jnp.asarray(pred)
        pm, qm = jnp.ones(len(pred), bool), jnp.ones(len(q), bool)
        row["chamfer"] = float(metrics.chamfer_distance(p, q, pm, qm))
        row["f_score"] = float(metrics.f_score(p, q, pm, qm, cfg.fscore_threshold))
    return row, {"ground_truth": (gt * 255 + 0.5).astype(np.uint8), "reconstruction": rec}
