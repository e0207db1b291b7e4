"""Official checkpoint class names -> Flax networks, and tiny dummy inputs for shape inference."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from trellis_jax.models.slat_encoder import SLatEncoder
from trellis_jax.models.slat_flow import SLatFlowModel
from trellis_jax.models.slat_gaussian_decoder import SLatGaussianDecoder
from trellis_jax.models.slat_mesh_decoder import SLatMeshDecoder
from trellis_jax.models.slat_rf_decoder import SLatRadianceFieldDecoder
from trellis_jax.models.ss_flow import SparseStructureFlowModel
from trellis_jax.models.ss_vae import SparseStructureDecoder, SparseStructureEncoder
from trellis_jax.sparse.tensor import SparseTensor

MODEL_CLASSES: dict[str, type] = {
    "SparseStructureEncoder": SparseStructureEncoder,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SparseStructureFlowModel": SparseStructureFlowModel,
    "SLatFlowModel": SLatFlowModel,
    "ElasticSLatFlowModel": SLatFlowModel,
    "SLatEncoder": SLatEncoder,
    "ElasticSLatEncoder": SLatEncoder,
    "SLatGaussianDecoder": SLatGaussianDecoder,
    "ElasticSLatGaussianDecoder": SLatGaussianDecoder,
    "SLatRadianceFieldDecoder": SLatRadianceFieldDecoder,
    "ElasticSLatRadianceFieldDecoder": SLatRadianceFieldDecoder,
    "SLatMeshDecoder": SLatMeshDecoder,
    "ElasticSLatMeshDecoder": SLatMeshDecoder,
}


class UnknownModelError(KeyError):
    pass


def build_model(class_name: str, args: dict, **overrides) -> Any:
    """Construct the Flax module for an official `{"name": class_name, "args": args}` json."""
    if class_name not in MODEL_CLASSES:
        raise UnknownModelError(f"unknown model class {class_name!r}; known: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[class_name]
    fields = set(cls.__dataclass_fields__)
    unknown = set(args) - fields
    if unknown:
        raise TypeError(f"{class_name} does not take argument(s) {sorted(unknown)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()}
    return cls(**kwargs, **overrides)


def dummy_inputs(model) -> tuple:
    """Smallest valid inputs for `model.init` / `jax.eval_shape` (parameter shapes do not depend on them)."""
    n = 8
    sparse = lambda c, res: SparseTensor(jnp.zeros((1, n, 3), jnp.int32), jnp.zeros((1, n, c)), jnp.ones((1, n), bool), res)
    if isinstance(model, SparseStructureEncoder):
        r = 2 ** len(model.channels)  # any size divisible by the encoder's total stride
        return (jnp.zeros((1, r, r, r, model.in_channels)),)
    if isinstance(model, SparseStructureDecoder):
        return (jnp.zeros((1, 4, 4, 4, model.latent_channels)),)
    if isinstance(model, SparseStructureFlowModel):
        r = model.resolution
        return (jnp.zeros((1, r, r, r, model.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, model.cond_channels)))
    if isinstance(model, SLatFlowModel):
        return (sparse(model.in_channels, model.resolution), jnp.zeros((1,)), jnp.zeros((1, 1, model.cond_channels)))
    if isinstance(model, SLatEncoder):
        return (sparse(model.in_channels, model.resolution),)
    if isinstance(model, (SLatGaussianDecoder, SLatRadianceFieldDecoder, SLatMeshDecoder)):
        return (sparse(model.latent_channels, model.resolution),)
    raise UnknownModelError(f"no dummy inputs for {type(model).__name__}")


def model_from_config(cfg, **overrides):
    """Flax module of a model config (checkpoint, class_name, args)."""
    args = cfg.args.to_dict() if hasattr(cfg.args, "to_dict") else dict(cfg.args)
    return build_model(cfg.class_name, args, **overrides)
