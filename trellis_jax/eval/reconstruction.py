"""Reconstruction fidelity of the SLat VAE on held-out records (the paper's Table 1 protocol).

Per record of a `build-data` dataset: SLat encoder (posterior mean) -> Gaussian decoder -> render at the
record's stored views (its cameras, `cfg.num_views` of them, at `cfg.resolution`) on `cfg.background`
-> PSNR / SSIM / LPIPS against the ground-truth renders composited on the same background.

With a mesh decoder (`cfg.checkpoints.decoder_mesh`): the decoded FlexiCubes mesh (`extract_mesh`) gives
Chamfer distance and F-score at `cfg.fscore_threshold` against the record's `surface_points`, and its
normal map rasterised at the same views (`render.mesh_raster`, world normals facing the camera in
[0, 1], black background) gives PSNR-N / LPIPS-N against the record's stored normal renders. With a
radiance-field decoder (`cfg.checkpoints.decoder_rf`), its volume renders at the same views give
PSNR / SSIM / LPIPS as a separate appearance row (keys rf_psnr, rf_ssim, rf_lpips). Whatever a record
or the config lacks is reported as not computed (None, "–" in the table) with the reason in `notes`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trellis_jax.eval import metrics
from trellis_jax.eval.surface import sample_surface
from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.render.preview import render_gaussian_views
from trellis_jax.render.turntable import render_field_views
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


def ground_truth_normals(arrays: dict, num_views: int, resolution: int) -> Optional[np.ndarray]:
    """A record's first `num_views` stored normal renders f32 [V, R, R, 3] in [0, 1] (0 off the asset),
    or None when the record stores none (built before they were stored, or store_depth_normal=False)."""
    from trellis_jax.data.schema import unpack_normal

    offsets = arrays.get("views_normal_png_offsets")
    if offsets is None or len(offsets) <= 1:
        return None
    n = len(offsets) - 1
    v = n if num_views < 0 else min(num_views, n)
    out = []
    for i in range(v):
        x = unpack_normal(arrays["views_normal_png"], offsets, i)
        if x.shape[0] != resolution:
            img = Image.fromarray((x * 255 + 0.5).astype(np.uint8)).resize((resolution, resolution), Image.Resampling.NEAREST)
            x = np.asarray(img, np.float32) / 255.0
        out.append(x)
    return np.stack(out)


RASTER_VIEWS = 8  # views rasterised per call (one compiled shape per mesh bucket)


@functools.partial(jax.jit, static_argnames=("resolution", "tile_capacity", "bin_capacity"))
def _normal_views(vertices, faces, face_mask, ext, intr, *, resolution, tile_capacity, bin_capacity):
    from trellis_jax.render import mesh_raster as mr

    ras = mr.rasterize_mesh(vertices, faces, face_mask, ext, intr, height=resolution, width=resolution, near=1.0, far=3.0,
                            tile_capacity=tile_capacity, bin_capacity=bin_capacity)
    return mr.camera_facing_normal_map(vertices, faces, ras, ext), ras.overflow, ras.tile_load


def render_normals(vertices: np.ndarray, faces: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray,
                   resolution: int) -> np.ndarray:
    """Normal maps f32 [V, R, R, 3] in [0, 1] of a mesh (vertices [n, 3], faces [m, 3]) at the given views,
    with the rasteriser's near 1 / far 3 (the mesh-decoder convention). Rasteriser capacities grow until
    no view overflows; the mesh is padded to a power-of-two bucket (few compiled shapes)."""
    nv, nf = _bucket(len(vertices)), _bucket(len(faces))
    vp = np.zeros((nv, 3), np.float32)
    fp = np.zeros((nf, 3), np.int32)
    vp[:len(vertices)], fp[:len(faces)] = vertices, faces
    fmask = np.arange(nf) < len(faces)
    tile_capacity, bin_capacity = 256, None
    out = []
    for start in range(0, len(extrinsics), RASTER_VIEWS):
        idx = np.minimum(np.arange(start, start + RASTER_VIEWS), len(extrinsics) - 1)
        for _ in range(4):
            img, overflow, load = _normal_views(vp, fp, fmask, extrinsics[idx], intrinsics[idx], resolution=resolution,
                                                tile_capacity=tile_capacity, bin_capacity=bin_capacity)
            if not np.asarray(overflow).any():
                break
            need = np.asarray(load).max(0)
            tile_capacity = max(tile_capacity, _bucket(int(need[0])))
            bin_capacity = max(bin_capacity or 0, _bucket(int(need[1])))
        else:
            raise ValueError(f"rasterising the decoded mesh still overflows at tile_capacity={tile_capacity}, "
                             f"bin_capacity={bin_capacity}")
        out.append(np.asarray(img)[:min(RASTER_VIEWS, len(extrinsics) - start)])
    return np.concatenate(out)


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
    decoder_rf: Optional[tuple] = None

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

    def mesh(self, latent) -> tuple[np.ndarray, np.ndarray]:
        """The decoded mesh (vertices [n, 3] world, faces [m, 3]) (FlexiCubes, capacities grown until nothing
        overflows). Needs a mesh decoder; an empty mesh is a ValueError."""
        from trellis_jax.representations.mesh.extract import extract_mesh_arrays

        vertices, faces, _ = extract_mesh_arrays(self._decode_mesh(self.decoder_mesh[1], latent))[0]
        if len(faces) == 0:
            raise ValueError("the decoded mesh is empty")
        return vertices, faces

    def mesh_points(self, latent, key, num_points: int) -> Optional[np.ndarray]:
        """Surface samples [num_points, 3] of the decoded mesh, or None without a mesh decoder."""
        if self.decoder_mesh is None:
            return None
        vertices, faces = self.mesh(latent)
        return surface_points(vertices, faces, key, num_points)

    def render_rf(self, latent, extrinsics: np.ndarray, intrinsics: np.ndarray, resolution: int, background,
                  sample_capacity: int, ray_chunk: int) -> np.ndarray:
        """The radiance-field decoder's renders uint8 [V, R, R, 3] over `background` at the given views, by the
        turntable's renderer (a view whose rays need more than `sample_capacity` samples is re-rendered)."""
        field = self._decode_rf(self.decoder_rf[1], latent)
        if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(field)):
            raise ValueError("the decoded radiance field holds NaN/Inf values")
        one = jax.tree.map(lambda x: x[0], field)
        return render_field_views(one, extrinsics, intrinsics, resolution, background, sample_capacity, ray_chunk)

    @functools.cached_property
    def _decode_rf(self):
        return jax.jit(self.decoder_rf[0].apply)

    @functools.cached_property
    def _decode_mesh(self):
        return jax.jit(self.decoder_mesh[0].apply)


def surface_points(vertices: np.ndarray, faces: np.ndarray, key, num_points: int) -> np.ndarray:
    return np.asarray(sample_surface(key, jnp.asarray(vertices), jnp.asarray(faces), jnp.ones(len(faces), bool), num_points))


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
        rf = load_model(ck.decoder_rf) if ck.get("decoder_rf") else None
        if enc[0].in_channels != feature_channels:
            raise ValueError(f"{ck.encoder}: the encoder takes {enc[0].in_channels}-channel features, the dataset has {feature_channels}")
        return SLatAutoencoder(enc, dec, mesh, resolution, True, rf)
    if ck.decoder_mesh or ck.get("decoder_rf"):
        raise ValueError("checkpoints.decoder_mesh / decoder_rf need checkpoints.encoder and decoder_gs (the latents they decode)")
    log("SLat VAE: no checkpoints given -> RANDOM encoder and Gaussian decoder")
    m = cfg.models
    enc = build_model("SLatEncoder", dict(m.slat_enc.to_dict(), resolution=resolution, in_channels=feature_channels))
    dec = build_model("SLatGaussianDecoder", dict(m.slat_dec_gs.to_dict(), resolution=resolution))
    return SLatAutoencoder((enc, _random(enc, cfg.seed)), (dec, _random(dec, cfg.seed + 1)), None, resolution, False)


def evaluate_asset(model: SLatAutoencoder, extractors, meta: dict, arrays: dict, cfg) -> tuple[dict, dict]:
    """One record -> (metrics row, images uint8 [V, R, R, 3]: 'ground_truth', 'reconstruction' (Gaussians),
    + 'rf' with a radiance-field decoder, + 'normal_gt', 'normal' with a mesh decoder and stored normal renders)."""
    gt, ext, intr = ground_truth_views(arrays, cfg.num_views, cfg.resolution, cfg.background)
    latent, g = model.reconstruct(np.asarray(arrays["coords"], np.int32), np.asarray(arrays["features"], np.float32))
    host = g.sample(0)
    if not all(np.isfinite(v).all() for v in host.values()):
        raise ValueError("the decoded Gaussians hold NaN/Inf values")
    rec = render_gaussian_views(host, ext, intr, cfg.resolution, tuple(cfg.background))
    rec_f = rec.astype(np.float32) / 255.0
    row = {"id": meta["id"], "views": len(gt), **appearance_metrics(rec_f, gt, extractors)}
    images = {"ground_truth": (gt * 255 + 0.5).astype(np.uint8), "reconstruction": rec}
    row["chamfer"] = row["f_score"] = row["psnr_normal"] = row["lpips_normal"] = None
    if model.decoder_mesh is not None:
        vertices, faces = model.mesh(latent)
        geo, normal_images = geometry_metrics(vertices, faces, arrays, ext, intr, extractors, cfg)
        row.update(geo)
        images.update(normal_images)
    row["rf_psnr"] = row["rf_ssim"] = row["rf_lpips"] = None
    if model.decoder_rf is not None:
        rf = model.render_rf(latent, ext, intr, cfg.resolution, tuple(cfg.background), int(cfg.rf_sample_capacity),
                             int(cfg.rf_ray_chunk))
        row.update(appearance_metrics(rf.astype(np.float32) / 255.0, gt, extractors, "rf_"))
        images["rf"] = rf
    return row, images


def appearance_metrics(pred: np.ndarray, gt: np.ndarray, extractors, prefix: str = "") -> dict:
    """Mean PSNR / SSIM / LPIPS (None without LPIPS weights) of renders pred vs gt f32 [V, R, R, 3] in [0, 1]."""
    lp = extractors.lpips(pred, gt)
    return {f"{prefix}psnr": float(np.mean(metrics.psnr(jnp.asarray(pred), jnp.asarray(gt)))),
            f"{prefix}ssim": float(np.mean(metrics.ssim(jnp.asarray(pred), jnp.asarray(gt)))),
            f"{prefix}lpips": None if lp is None else float(np.mean(lp))}


def geometry_metrics(vertices: np.ndarray, faces: np.ndarray, arrays: dict, ext: np.ndarray, intr: np.ndarray, extractors,
                     cfg) -> tuple[dict, dict]:
    """A mesh vs a record: ({chamfer, f_score} from `surface_points`, {psnr_normal, lpips_normal} from the
    stored normal renders at views ext/intr; None where the record lacks them), normal-map images."""
    out = {"chamfer": None, "f_score": None, "psnr_normal": None, "lpips_normal": None}
    images = {}
    gt_points = arrays.get("surface_points")
    if gt_points is not None:
        p = jnp.asarray(surface_points(vertices, faces, jax.random.PRNGKey(cfg.seed), int(cfg.surface_points)))
        q = jnp.asarray(gt_points, jnp.float32)
        pm, qm = jnp.ones(len(p), bool), jnp.ones(len(q), bool)
        out["chamfer"] = float(metrics.chamfer_distance(p, q, pm, qm))
        out["f_score"] = float(metrics.f_score(p, q, pm, qm, cfg.fscore_threshold))
    gt_normal = ground_truth_normals(arrays, len(ext), cfg.resolution)
    if gt_normal is not None:
        if len(gt_normal) != len(ext):
            raise ValueError(f"the record stores {len(gt_normal)} normal renders for {len(ext)} views")
        pred = render_normals(vertices, faces, ext, intr, cfg.resolution)
        lp = extractors.lpips(pred, gt_normal)
        out["psnr_normal"] = float(np.mean(metrics.psnr(jnp.asarray(pred), jnp.asarray(gt_normal))))
        out["lpips_normal"] = None if lp is None else float(np.mean(lp))
        images = {"normal_gt": (gt_normal * 255 + 0.5).astype(np.uint8), "normal": (pred * 255 + 0.5).astype(np.uint8)}
    return out, images
