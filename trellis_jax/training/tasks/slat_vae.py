"""SLat-VAE task: SLat encoder + Gaussian decoder trained jointly by differentiable splatting.

Batch: coords int32 [B, L, 3], feats float32 [B, L, C] (voxel features, C = encoder in_channels),
mask bool [B, L] (valid rows first), one view per asset: image float32 [B, R, R, 3] (straight colour),
alpha [B, R, R], extrinsics [B, 4, 4] (OpenCV world->camera), intrinsics [B, 3, 3] (normalised).
Loss: `trellis_jax.losses.slat_vae.slat_vae_loss` with the weights of cfg.loss
(L1 + 0.2·(1 − SSIM) + 0.2·LPIPS + 1e-6·KL + 1e4·volume + 1e-3·opacity). LPIPS needs a VGG16 backbone
and the lpips linear layers (cfg.loss.lpips_backbone / lpips_linear, weights files); without a backbone
the term is off and the task says so.
Grain data: stage 'slat_vae' (one random stored render per asset, resized to cfg.data.render_size).
`export_models` gives the trained networks for official-format checkpoint directories.
"""
from __future__ import annotations

from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.losses.slat_vae import render_views, slat_vae_loss
from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.render.cameras import orbit_cameras
from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.training.tasks.base import Task, compute_dtype, encoder_decoder_models, np_rng


def _lpips_from_config(loss_cfg, log):
    """The LPIPS term's function (pred, target [-1, 1]) -> [B] from cfg.loss.lpips_backbone (torchvision
    VGG16 weights) and cfg.loss.lpips_linear (the lpips package's linear layers), or None when no
    backbone is configured (announced: the loss is then L1 + SSIM + the regularisers)."""
    backbone, linear = loss_cfg.get("lpips_backbone", ""), loss_cfg.get("lpips_linear", "")
    if not backbone:
        log("slat_vae: LPIPS term OFF (no loss.lpips_backbone configured): reconstruction loss is L1 + 0.2*(1-SSIM)")
        return None
    try:
        from trellis_jax.losses.lpips import load_lpips_fn
    except ImportError as e:
        raise ValueError(f"config loss.lpips_backbone={backbone!r} is set but trellis_jax.losses.lpips is not available ({e})") from e
    log(f"slat_vae: LPIPS term on (VGG16 {backbone}, linear layers {linear})")
    return load_lpips_fn(backbone, linear, log)


class SLatVAETask(Task):
    stage = "slat_vae"

    def __init__(self, cfg, log=print):
        super().__init__(cfg)
        dt = compute_dtype(cfg)
        enc, dec = cfg.model.encoder, cfg.model.decoder
        self.encoder = build_model(enc.class_name, enc.args.to_dict(), dtype=dt)
        self.decoder = build_model(dec.class_name, dec.args.to_dict(), dtype=dt)
        self.resolution = int(enc.args.resolution)
        if int(dec.args.resolution) != self.resolution:
            raise ValueError(f"model.encoder.args.resolution {self.resolution} != model.decoder.args.resolution {dec.args.resolution}")
        if int(enc.args.latent_channels) != int(dec.args.latent_channels):
            raise ValueError("model.encoder.args.latent_channels must equal model.decoder.args.latent_channels")
        self.channels = int(enc.args.in_channels)
        self.capacity = int(cfg.data.capacity)
        self.render_size = int(cfg.data.render_size)
        self.lpips_fn = _lpips_from_config(cfg.loss, log)

    # -- model -------------------------------------------------------------------------------
    def init_params(self, rng):
        k1, k2 = jax.random.split(rng)
        return {"encoder": self.encoder.init(k1, *dummy_inputs(self.encoder)),
                "decoder": self.decoder.init(k2, *dummy_inputs(self.decoder))}

    def loss(self, params, batch, rng, frozen=None):
        w = self.cfg.loss
        return slat_vae_loss(self.encoder, self.decoder, params, batch, rng, kl_weight=float(w.kl_weight),
                             volume_weight=float(w.volume_weight), opacity_weight=float(w.opacity_weight),
                             ssim_weight=float(w.ssim_weight), lpips_weight=float(w.lpips_weight), lpips_fn=self.lpips_fn)

    def export_models(self, params):
        return encoder_decoder_models(self.cfg.model, params)

    # -- evaluation --------------------------------------------------------------------------
    @cached_property
    def _reconstruct(self):
        def rec(params, coords, feats, mask, extrinsics, intrinsics, background):
            x = SparseTensor(coords, feats, mask, self.resolution)
            _, mean, _ = self.encoder.apply(params["encoder"], x)
            g = self.decoder.apply(params["decoder"], mean)
            return render_views(g, extrinsics, intrinsics, background, self.render_size)[0]
        return jax.jit(rec)

    def reconstruct(self, params, coords, feats, mask, extrinsics, intrinsics, background=(1.0, 1.0, 1.0)) -> jax.Array:
        """Deterministic reconstruction (posterior mean) of one asset [1, L, ...] seen from V cameras
        (extrinsics [V, 4, 4], intrinsics [V, 3, 3]) -> rgb [V, R, R, 3] on `background`."""
        return self._reconstruct(params, coords, feats, mask, extrinsics, intrinsics, jnp.asarray(background, jnp.float32))

    # -- data --------------------------------------------------------------------------------
    @cached_property
    def _synthetic_family(self):
        g = np.random.default_rng(int(self.cfg.data.synthetic_seed))
        return {"colour": g.standard_normal((4, 3)).astype(np.float32) * 2.0,          # [x, y, z, 1] -> rgb logits
                "code": g.standard_normal((3, 3)).astype(np.float32),                   # code -> rgb logits
                "feats": g.standard_normal((6, self.channels)).astype(np.float32) / np.sqrt(6)}

    def synthetic_batch(self, batch_size, rng):
        """Coloured ellipsoid shells on the voxel grid, seen from a random orbit camera. Voxel features
        are a fixed linear map of (colour, position); the target view is the voxels drawn as opaque
        discs (z-buffered, the voxel's projected size), so a decoder of Gaussians can match it."""
        g = np_rng(rng)
        fam = self._synthetic_family
        L, R, S = self.capacity, self.resolution, self.render_size
        coords = np.zeros((batch_size, L, 3), np.int32)
        feats = np.zeros((batch_size, L, self.channels), np.float32)
        mask = np.zeros((batch_size, L), bool)
        image = np.zeros((batch_size, S, S, 3), np.float32)
        alpha = np.zeros((batch_size, S, S), np.float32)
        ext, intr = orbit_cameras(g.uniform(0, 2 * np.pi, batch_size), g.uniform(-0.3, 0.8, batch_size))
        c = np.arange(R)
        grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
        centres = (grid + 0.5) / R - 0.5
        for b in range(batch_size):
            code = g.standard_normal(3).astype(np.float32)
            radii = g.uniform(0.15, 0.35, 3)
            d = np.sqrt(np.sum(np.square((centres - g.uniform(-0.05, 0.05, 3)) / radii), -1))
            shell = np.nonzero(np.abs(d - 1) * radii.min() < 0.75 / R)[0]
            if len(shell) > L:  # thin the shell to the capacity (deterministic in the seed)
                shell = np.sort(g.choice(shell, L, replace=False))
            n = len(shell)
            xyz = centres[shell]
            rgb = 1 / (1 + np.exp(-(np.concatenate([xyz, np.ones((n, 1))], 1) @ fam["colour"] + code @ fam["code"])))
            coords[b, :n], mask[b, :n] = grid[shell], True
            feats[b, :n] = np.concatenate([rgb - 0.5, xyz * 2], 1) @ fam["feats"]
            image[b], alpha[b] = _draw_voxels(xyz, rgb, 1.0 / R, ext[b], intr[b], S)
        return {"coords": coords, "feats": feats, "mask": mask, "image": image, "alpha": alpha,
                "extrinsics": ext.astype(np.float32), "intrinsics": intr.astype(np.float32)}

    def tokens_per_batch(self, batch):
        return int(np.sum(batch["mask"]))

    def grain_kwargs(self):
        return {"buckets": (self.capacity,), "max_voxels": self.capacity, "resolution": self.resolution,
                "render_size": self.render_size}

    def prepare(self, batch):
        out = {"coords": np.asarray(batch["coords"], np.int32), "feats": np.asarray(batch["feats"], np.float32),
               "mask": np.asarray(batch["mask"], bool)}
        if out["feats"].shape[-1] != self.channels:
            raise ValueError(f"the dataset's voxel features have {out['feats'].shape[-1]} channels, "
                             f"model.encoder.args.in_channels is {self.channels}")
        for k in ("image", "alpha", "extrinsics", "intrinsics"):
            out[k] = np.asarray(batch[k], np.float32)
        return out


def _draw_voxels(xyz: np.ndarray, rgb: np.ndarray, size: float, extrinsics: np.ndarray, intrinsics: np.ndarray,
                 res: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centres xyz [N, 3] (world) with colours rgb [N, 3] as opaque discs of the projected voxel
    size, nearest one per pixel (ties: the lower index) -> (image [res, res, 3], alpha [res, res]).

    Painter's order, each disc over its own bounding box: memory O(res²), not the O(N·res²) of a
    depth test of every voxel at every pixel (40 GB for a released 32K-voxel asset at 512²)."""
    cam = xyz @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    z = np.maximum(cam[:, 2], 1e-6)
    u = intrinsics[0, 0] * res * cam[:, 0] / z + intrinsics[0, 2] * res
    v = intrinsics[1, 1] * res * cam[:, 1] / z + intrinsics[1, 2] * res
    radius = np.maximum(intrinsics[0, 0] * res * size / z * 0.7, 0.5)
    image = np.zeros((res, res, 3), np.float32)
    alpha = np.zeros((res, res), np.float32)
    px = np.arange(res) + 0.5
    span = lambda c, r: (max(int(np.ceil(c - r - 0.5)), 0), min(int(np.floor(c + r - 0.5)), res - 1) + 1)
    for n in np.lexsort((-np.arange(len(z)), -z)):  # far to near; among equal depths the lowest index last
        (x0, x1), (y0, y1) = span(u[n], radius[n]), span(v[n], radius[n])
        if x0 >= x1 or y0 >= y1:
            continue
        inside = (np.square(px[None, x0:x1] - u[n]) + np.square(px[y0:y1, None] - v[n])) <= np.square(radius[n])
        image[y0:y1, x0:x1][inside] = rgb[n]
        alpha[y0:y1, x0:x1][inside] = 1.0
    return image, alpha
