"""SLat -> 3D Gaussians decoder (reference `SLatGaussianDecoder`), 32 Gaussians per voxel.

Head channels per voxel (Gaussian-major inside each block): _xyz [G,3], _features_dc [G,3],
_scaling [G,3], _rotation [G,4], _opacity [G]; each raw block times its `lr` entry. Offsets are
tanh-squashed around fixed Hammersley perturbations so each Gaussian stays within ±0.75 voxel.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trellis_jax.models.slat_vae_trunk import SLatVAEBase
from trellis_jax.modules.layers import linear
from trellis_jax.representations.gaussians import Gaussians
from trellis_jax.sparse.norm import layer_norm
from trellis_jax.sparse.tensor import SparseTensor

DEFAULT_GS_CONFIG = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus",
}
_LAYOUT = (("_xyz", 3), ("_features_dc", 3), ("_scaling", 3), ("_rotation", 4), ("_opacity", 1))


def radical_inverse(base: int, n: int) -> float:
    val, inv, f = 0.0, 1.0 / base, 1.0 / base
    while n > 0:
        val += (n % base) * f
        n //= base
        f *= inv
    return val


def offset_perturbation(num_gaussians: int, voxel_size: float) -> np.ndarray:
    """[G, 3]: atanh((2h − 1)/voxel_size), h = (g/G, RI_2(g), RI_3(g)) (Hammersley point)."""
    h = np.array([[g / num_gaussians, radical_inverse(2, g), radical_inverse(3, g)] for g in range(num_gaussians)], np.float32)
    return np.arctanh((h * 2 - 1) / voxel_size).astype(np.float32)


def gaussian_channels(num_gaussians: int) -> int:
    return num_gaussians * sum(n for _, n in _LAYOUT)


def decode_gaussians(raw: jax.Array, x: SparseTensor, perturbation: jax.Array, rep: dict) -> Gaussians:
    """Head output raw [B, L, 14G] on voxels x -> activated `Gaussians` [B, L·G, ...]."""
    B, L, _ = raw.shape
    G = rep["num_gaussians"]
    blocks, start = {}, 0
    for name, n in _LAYOUT:
        blocks[name] = raw[..., start : start + G * n].reshape(B, L, G, n).astype(jnp.float32) * rep["lr"][name]
        start += G * n
    res = x.resolution
    offset = blocks["_xyz"] + (perturbation if rep["perturb_offset"] else 0.0)
    offset = jnp.tanh(offset) / res * 0.5 * rep["voxel_size"]
    centre = (x.coords.astype(jnp.float32)[:, :, None, :] + 0.5) / res
    xyz = centre + offset - 0.5  # aabb origin −0.5, size 1
    if rep["scaling_activation"] == "softplus":
        scale_bias = math.log(math.expm1(rep["scaling_bias"]))
        scales = jax.nn.softplus(blocks["_scaling"] + scale_bias)
    elif rep["scaling_activation"] == "exp":
        scales = jnp.exp(blocks["_scaling"] + math.log(rep["scaling_bias"]))
    else:
        raise ValueError(f"unknown scaling_activation {rep['scaling_activation']!r}")
    scales = jnp.sqrt(jnp.square(scales) + rep["3d_filter_kernel_size"] ** 2)
    rot = blocks["_rotation"] + jnp.array([1.0, 0.0, 0.0, 0.0])
    rot = rot / jnp.maximum(jnp.linalg.norm(rot, axis=-1, keepdims=True), 1e-12)
    ob = rep["opacity_bias"]
    opacity = jax.nn.sigmoid(blocks["_opacity"][..., 0] + math.log(ob / (1 - ob)))
    flat = lambda a: a.reshape((B, L * G) + a.shape[3:])
    return Gaussians(flat(xyz), flat(blocks["_features_dc"]), flat(scales), flat(rot), flat(opacity), jnp.repeat(x.mask, G, axis=1))


class SLatGaussianDecoder(SLatVAEBase):
    """z: SparseTensor [B, L, latent_channels] at 64³ -> Gaussians [B, L·G]."""

    representation_config: Optional[dict] = None

    @property
    def rep(self) -> dict:
        rep = dict(DEFAULT_GS_CONFIG)
        rep.update(dict(self.representation_config or {}))
        return rep

    @nn.compact
    def __call__(self, z: SparseTensor, return_raw: bool = False):
        rep = self.rep
        G = rep["num_gaussians"]
        h = self.trunk(z)
        h = layer_norm(h.astype(jnp.float32), 1e-5)
        raw = linear(gaussian_channels(G), ("embed", "io"), "out_layer", zero_init=True)(h)
        pert = self.param(
            "offset_perturbation",
            nn.with_logical_partitioning(lambda *_: jnp.asarray(offset_perturbation(G, rep["voxel_size"])), (None, None)),
            (G, 3),
        )
        gaussians = decode_gaussians(raw, z, jax.lax.stop_gradient(pert), rep)
        return (gaussians, raw) if return_raw else gaussians
