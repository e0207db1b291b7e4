"""Features: DINOv2 patch tokens of every view, sampled at the voxel centres, averaged over views.

Reference (docs/reference_facts.md#voxel-features):
each 512^2 render is resized to 518 (LANCZOS), alpha-premultiplied, encoded by
DINOv2 ViT-L/14-reg; the patch part of x_prenorm (CLS and registers dropped, no norm) is a [37, 37, C]
map; every voxel centre is projected into the view (uv in [0,1], origin top-left) and the map is
sampled bilinearly at 2uv - 1 like `grid_sample(align_corners=False, padding_mode='zeros')`; the mean
over all views (no visibility test) is stored as float16 [L, C].

Here one jitted step encodes a fixed-size batch of views and adds their samples to a running sum, so
compiled shapes depend only on (views per batch, voxel capacity bucket); voxel sets are padded to a
power-of-two bucket (at least `voxel_bucket`), so a process compiles at most ~log2(32768/1024)+1 shapes.

The image encoder is any `ImageEncoder`: `patch_tokens(params, images [N, S, S, 3] in [0,1]) ->
[N, G, G, C]`. `make_image_encoder('tiny' | 'dinov2_vitl14_reg', ...)` builds one from
`trellis_jax.encoders.dinov2` (random weights for 'tiny' and for an unloaded ViT-L, pretrained from an
HF-format directory).

CLI: python -m data_pipeline.features --views-npz V.npz --voxels X.npy --out F.npz
     [--encoder tiny|dinov2_vitl14_reg] [--weights HF_DIR]
(V.npz: images uint8 [V,R,R,4], extrinsics [V,4,4], intrinsics [V,3,3]; X.npy: indices [L,3]).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data_pipeline.voxelize import voxel_centres


@dataclasses.dataclass(frozen=True)
class ImageEncoder:
    """A frozen image encoder giving patch-token maps. `fn(params, images) -> [N, G, G, C]`."""

    name: str
    fn: Callable[[Any, jax.Array], jax.Array]
    params: Any
    image_size: int
    grid: int
    channels: int

    def __hash__(self):  # used as a static jit argument
        return id(self)

    def __eq__(self, other):
        return self is other


def make_image_encoder(name: str = "tiny", weights: str | None = None, *, image_size: int = 518,
                       seed: int = 0, dtype=jnp.float32) -> ImageEncoder:
    """'tiny': a 1-layer width-64 DINOv2-with-registers, random weights (pipeline stand-in).
    'dinov2_vitl14_reg': ViT-L/14-reg; pretrained weights from `weights` (HF-format dir), else random."""
    from trellis_jax.encoders import dinov2

    if name == "tiny":
        cfg = dinov2.DINOv2Config(hidden_size=64, num_layers=1, num_heads=2, image_size=image_size)
    elif name == "dinov2_vitl14_reg":
        cfg = dinov2.DINOv2Config(image_size=image_size)
    else:
        raise ValueError(f"unknown image encoder {name!r} (expected 'tiny' or 'dinov2_vitl14_reg')")
    if weights is not None:
        from trellis_jax.encoders.hf_weights import load_dinov2

        model, params = load_dinov2(weights, dtype=dtype)
        cfg = model.config
        params = {"params": params}
    else:
        model = dinov2.DINOv2(cfg, dtype=dtype)
        dummy = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
        params = jax.jit(model.init)(jax.random.PRNGKey(seed), dummy)
        from flax.linen import meta

        params = meta.unbox(params)
    fn = functools.partial(dinov2.patch_tokens, model)
    return ImageEncoder(name, fn, params, cfg.image_size, cfg.grid, cfg.hidden_size)


def preprocess_views(images: np.ndarray, size: int, threads: int = 8) -> np.ndarray:
    """RGBA uint8 [V, R, R, 4] -> alpha-premultiplied RGB float32 [V, size, size, 3] in [0, 1]
    (LANCZOS resize of the straight-alpha RGBA image, as the reference). PIL releases the GIL while
    resizing, so views are prepared on a thread pool."""
    out = np.empty((len(images), size, size, 3), np.float32)

    def one(i):
        img = images[i]
        if img.shape[0] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
        x = img.astype(np.float32) * (1.0 / 255.0)
        np.multiply(x[..., :3], x[..., 3:4], out=out[i])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(len(images))))
    return out


def project_uv(points: jax.Array, extrinsics: jax.Array, intrinsics: jax.Array) -> jax.Array:
    """World points [L, 3] -> image coordinates uv [V, L, 2] (in [0,1] inside the image, top-left 0)."""
    cam = jnp.einsum("vij,lj->vli", extrinsics[:, :3, :3], points) + extrinsics[:, None, :3, 3]
    img = jnp.einsum("vij,vlj->vli", intrinsics, cam)
    return img[..., :2] / img[..., 2:3]


def bilinear_sample(fmap: jax.Array, uv: jax.Array) -> jax.Array:
    """`grid_sample(fmap, 2uv-1, bilinear, align_corners=False, zeros)` for one map.

    fmap [H, W, C], uv [L, 2] (u along W, v along H) -> [L, C] float32.
    """
    H, W, C = fmap.shape
    x = uv[:, 0] * W - 0.5
    y = uv[:, 1] * H - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    flat = fmap.reshape(H * W, C).astype(jnp.float32)
    out = jnp.zeros((uv.shape[0], C), jnp.float32)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        w = (1.0 - jnp.abs(x - xi)) * (1.0 - jnp.abs(y - yi))
        inside = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
        idx = jnp.clip(yi, 0, H - 1).astype(jnp.int32) * W + jnp.clip(xi, 0, W - 1).astype(jnp.int32)
        out = out + jnp.where(inside, w, 0.0)[:, None] * flat[idx]
    return out


@functools.partial(jax.jit, static_argnames=("encoder",), donate_argnames=("acc",))
def _accumulate(encoder: ImageEncoder, params, acc, images, extrinsics, intrinsics, points, view_valid):
    """acc [L, C] += sum over valid views of the features sampled at the points."""
    tokens = encoder.fn(params, images)  # [Vb, G, G, C]
    uv = project_uv(points, extrinsics, intrinsics)
    samples = jax.vmap(bilinear_sample)(tokens, uv)  # [Vb, L, C]
    return acc + jnp.einsum("v,vlc->lc", view_valid.astype(jnp.float32), samples)


def voxel_features(encoder: ImageEncoder, images: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray,
                   indices: np.ndarray, *, resolution: int = 64, batch_views: int = 8,
                   voxel_bucket: int = 1024) -> np.ndarray:
    """Mean patch features [L, C] float16 of the voxels `indices` [L, 3] over the RGBA views."""
    n_views = len(images)
    if n_views == 0:
        raise ValueError("voxel_features: no views")
    pixels = preprocess_views(images, encoder.image_size)
    L = len(indices)
    cap = max(voxel_bucket, 1 << max(L - 1, 0).bit_length())  # power-of-two buckets: few compiles
    points = np.zeros((cap, 3), np.float32)
    points[:L] = voxel_centres(indices, resolution)
    acc = jnp.zeros((cap, encoder.channels), jnp.float32)
    for start in range(0, n_views, batch_views):
        stop = min(start + batch_views, n_views)
        pad = batch_views - (stop - start)

        def padded(a):
            return np.concatenate([a[start:stop], np.repeat(a[stop - 1 : stop], pad, axis=0)]) if pad else a[start:stop]

        valid = np.arange(batch_views) < stop - start
        acc = _accumulate(encoder, encoder.params, acc, padded(pixels), padded(extrinsics).astype(np.float32),
                          padded(intrinsics).astype(np.float32), points, valid)
    return (np.asarray(acc[:L]) / n_views).astype(np.float16)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views-npz", required=True)
    p.add_argument("--voxels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", default="tiny", choices=["tiny", "dinov2_vitl14_reg"])
    p.add_argument("--weights", default=None, help="HF-format DINOv2 directory (pretrained)")
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--batch-views", type=int, default=8)
    args = p.parse_args(argv)
    views = np.load(args.views_npz)
    indices = np.load(args.voxels)
    enc = make_image_encoder(args.encoder, args.weights, image_size=args.image_size)
    feats = voxel_features(enc, views["images"], views["extrinsics"], views["intrinsics"], indices,
                           batch_views=args.batch_views)
    np.savez(args.out, indices=indices.astype(np.uint8), patchtokens=feats)
    print(f"{args.out}: features {feats.shape} {feats.dtype}")


if __name__ == "__main__":
    main()
