"""LPIPS perceptual distance, VGG16 variant (as the `lpips` PyTorch package, version 0.1).

    d(a, b) = Σ_l mean_hw( w_l · (n(φ_l(s(a))) − n(φ_l(s(b))))² )

s: the package's input scaling ((x − shift) / scale, x in [−1, 1]); φ_l: VGG16 features after relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3 (torchvision `vgg16().features` layers 0–29); n: division by the
per-pixel channel norm (+1e-10); w_l: non-negative 1×1 "linear" weights [C_l]. Images are NHWC.

Weights (no download here): the VGG16 backbone from a torchvision state dict (`features.{i}.weight`
[O, I, 3, 3], `features.{i}.bias`) and the linear layers from the `lpips` package's `weights/v0.1/vgg.pth`
layout (`lin{k}.model.1.weight` [1, C, 1, 1]). Both are read as the PyTorch `.pth` files themselves
(`trellis_jax.checkpoints.torch_pth`, no torch needed), or as `.safetensors` / `.npz` with those key
names. `load_lpips_fn` returns None and prints that the loss falls back to L1 + SSIM when no backbone
is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16().features: conv layer indices per LPIPS stage (a 2×2 max-pool precedes stages 1–4).
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_CHANNELS = (64, 128, 256, 512, 512)
EPS = 1e-10


class LPIPSWeightsError(ValueError):
    """An LPIPS weights file is missing, unreadable or does not match VGG16 / the linear layers."""


class VGG16Features(nn.Module):
    """Scaled images [B, H, W, 3] -> the five relu{1..5}_{2,2,3,3,3} feature maps (NHWC)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        feats = []
        for s, (layers, ch) in enumerate(zip(VGG16_STAGES, VGG16_CHANNELS)):
            if s > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in layers:
                x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32, name=f"features_{i}")(x)
                x = nn.relu(x)
            feats.append(x)
        return feats


class LPIPS(nn.Module):
    """LPIPS distance of images a, b [B, H, W, 3] in [−1, 1] -> [B] (f32)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
        x = (jnp.concatenate([a, b], 0).astype(jnp.float32) - shift) / scale
        feats = VGG16Features(self.dtype, name="vgg")(x.astype(self.dtype))
        B = a.shape[0]
        total = jnp.zeros((B,), jnp.float32)
        for k, (f, ch) in enumerate(zip(feats, VGG16_CHANNELS)):
            w = self.param(f"lin{k}", lambda key, shape: jax.random.uniform(key, shape), (ch,))
            f = f.astype(jnp.float32)
            f = f / (jnp.sqrt(jnp.sum(f * f, -1, keepdims=True)) + EPS)
            d = (f[:B] - f[B:]) ** 2
            total = total + jnp.mean(jnp.einsum("bhwc,c->bhw", d, w), axis=(1, 2))
        return total


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise LPIPSWeightsError(f"{path}: file not found")
    try:
        if path.suffix in (".pth", ".pt"):
            from trellis_jax.checkpoints.torch_pth import read_torch_state_dict

            return read_torch_state_dict(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except Exception as e:  # truncated / corrupt / pickled
        raise LPIPSWeightsError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    raise LPIPSWeightsError(
        f"{path}: unsupported format {path.suffix!r}; give the .pth file, or .safetensors / .npz with the torch key names"
    )


def _take(tensors: dict, key: str, shape: tuple, path: Path) -> np.ndarray:
    if key not in tensors:
        raise LPIPSWeightsError(f"{path}: missing tensor {key!r}")
    a = np.asarray(tensors[key], np.float32)
    if a.shape != shape:
        raise LPIPSWeightsError(f"{path}: {key} has shape {a.shape}, expected {shape}")
    return a


def lpips_params_from_state_dicts(vgg: dict, lin: dict, vgg_source: Path = Path("<vgg>"), lin_source: Path = Path("<lin>")) -> dict:
    """torchvision VGG16 + lpips linear-layer state dicts (numpy) -> LPIPS params."""
    conv, in_ch = {}, 3
    for layers, ch in zip(VGG16_STAGES, VGG16_CHANNELS):
        for i in layers:
            w = _take(vgg, f"features.{i}.weight", (ch, in_ch, 3, 3), vgg_source)
            conv[f"features_{i}"] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0)), "bias": jnp.asarray(_take(vgg, f"features.{i}.bias", (ch,), vgg_source))}
            in_ch = ch
    params = {"vgg": conv}
    for k, ch in enumerate(VGG16_CHANNELS):
        w = _take(lin, f"lin{k}.model.1.weight", (1, ch, 1, 1), lin_source).reshape(ch)
        if (w < 0).any():
            raise LPIPSWeightsError(f"{lin_source}: lin{k} has negative weights; LPIPS linear layers are non-negative")
        params[f"lin{k}"] = jnp.asarray(w)
    return {"params": params}


def load_lpips(backbone: str | Path, linear: str | Path) -> dict:
    """-> LPIPS params from a torchvision VGG16 file and the lpips package's linear-layer file."""
    backbone, linear = Path(backbone), Path(linear)
    return lpips_params_from_state_dicts(_read_tensors(backbone), _read_tensors(linear), backbone, linear)


def lpips_fn(params, dtype=jnp.float32) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(a, b) [B, H, W, 3] in [−1, 1] -> LPIPS [B]; the form `reconstruction_loss(lpips_fn=...)` takes."""
    model = LPIPS(dtype)
    return lambda a, b: model.apply(params, a, b)


def load_lpips_fn(backbone: str | Path | None, linear: str | Path | None, log=print):
    """The LPIPS term for L_rec, or None (printing that L_rec falls back to L1 + 0.2·(1 − SSIM)) when
    no backbone is given. A backbone without the linear-layer file is an error."""
    if not backbone:
        log("LPIPS: no VGG16 backbone given -> the reconstruction loss is L1 + 0.2*(1-SSIM) only (no LPIPS term)")
        return None
    if not linear:
        raise LPIPSWeightsError(f"{backbone}: LPIPS needs the linear-layer weights too (the lpips package's weights/v0.1/vgg.pth, as npz/safetensors)")
    return lpips_fn(load_lpips(backbone, linear))
