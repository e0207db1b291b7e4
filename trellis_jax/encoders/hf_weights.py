"""Load DINOv2 / CLIP text / CLIP image weights from a local Hugging Face-format directory (no PyTorch needed).

A directory holds `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`).
Key styles understood: transformers v4 (as published on the Hub), transformers v5 state dicts, and
for DINOv2 the torch.hub layout TRELLIS itself loads (`blocks.N.attn.qkv`, `ls1.gamma`, ...).
Loading is strict: missing, unexpected and mis-shaped tensors are listed in one error naming the file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from trellis_jax.encoders.clip_image import CLIPVisionConfig, CLIPVisionEncoder
from trellis_jax.encoders.clip_text import CLIPTextConfig, CLIPTextEncoder
from trellis_jax.encoders.dinov2 import DINOv2, DINOv2Config


class EncoderWeightsError(ValueError):
    """A weights directory is missing, corrupt, or does not match the architecture."""


def read_safetensors_dir(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of `directory` as numpy arrays (single file or sharded index)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = (
        sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [directory / "model.safetensors"]
    )
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        if not f.exists():
            raise EncoderWeightsError(f"{f}: weights file not found")
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types for truncation/corruption
            raise EncoderWeightsError(f"{f}: cannot read safetensors file ({e})") from e
    return tensors


def _linear(w):
    return np.asarray(w).T


def _dinov2_rules(num_layers: int) -> list[tuple[str, Callable[[re.Match, np.ndarray], dict]]]:
    def one(path, fn=lambda a: a):
        return lambda m, a: {path.format(*m.groups()): fn(a)}

    def patch(a):  # conv [C, 3, P, P] -> dense kernel [(py, px, c), C]
        return np.asarray(a).transpose(2, 3, 1, 0).reshape(-1, a.shape[0])

    def qkv(kind):
        def f(m, a):
            i = m.group(1)
            parts = np.split(np.asarray(a), 3, axis=0)
            leaf = "kernel" if kind == "weight" else "bias"
            fn = _linear if kind == "weight" else (lambda x: x)
            return {f"layer_{i}/{n}/{leaf}": fn(p) for n, p in zip(("q_proj", "k_proj", "v_proj"), parts)}
        return f

    rules = [
        (r"(?:embeddings\.)?cls_token", one("cls_token")),
        (r"(?:embeddings\.)?register_tokens", one("register_tokens")),
        (r"embeddings\.position_embeddings|pos_embed", one("position_embeddings")),
        (r"(?:embeddings\.patch_embeddings\.projection|patch_embed\.proj)\.weight", one("patch_embed/kernel", patch)),
        (r"(?:embeddings\.patch_embeddings\.projection|patch_embed\.proj)\.bias", one("patch_embed/bias")),
        (r"(?:layernorm|norm)\.weight", one("layernorm/scale")),
        (r"(?:layernorm|norm)\.bias", one("layernorm/bias")),
        (r"blocks\.(\d+)\.attn\.qkv\.weight", qkv("weight")),
        (r"blocks\.(\d+)\.attn\.qkv\.bias", qkv("bias")),
    ]
    layer_prefix = r"(?:encoder\.layer|blocks)\."
    per_layer = {
        r"norm1": "norm1", r"norm2": "norm2",
        r"attention\.attention\.query|attention\.q_proj": "q_proj",
        r"attention\.attention\.key|attention\.k_proj": "k_proj",
        r"attention\.attention\.value|attention\.v_proj": "v_proj",
        r"attention\.output\.dense|attention\.o_proj|attn\.proj": "o_proj",
        r"mlp\.fc1": "fc1", r"mlp\.fc2": "fc2",
    }
    for src, dst in per_layer.items():
        is_norm = dst.startswith("norm")
        rules.append((layer_prefix + rf"(\d+)\.(?:{src})\.weight", one(f"layer_{{0}}/{dst}/" + ("scale" if is_norm else "kernel"), (lambda a: a) if is_norm else _linear)))
        rules.append((layer_prefix + rf"(\d+)\.(?:{src})\.bias", one(f"layer_{{0}}/{dst}/bias")))
    rules.append((layer_prefix + r"(\d+)\.(?:layer_scale1\.lambda1|ls1\.gamma)", one("layer_{0}/ls1")))
    rules.append((layer_prefix + r"(\d+)\.(?:layer_scale2\.lambda1|ls2\.gamma)", one("layer_{0}/ls2")))
    return rules


_DINOV2_IGNORED = re.compile(r"(embeddings\.)?mask_token")


def _clip_layer_rules(p: str):
    def one(path, fn=lambda a: a):
        return lambda m, a: {path.format(*m.groups()): fn(a)}

    rules = []
    per_layer = {
        "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
        "self_attn.out_proj": "o_proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2",
        "layer_norm1": "norm1", "layer_norm2": "norm2",
    }
    for src, dst in per_layer.items():
        is_norm = dst.startswith("norm")
        s = re.escape(src)
        rules.append((p + rf"encoder\.layers\.(\d+)\.{s}\.weight", one(f"layer_{{0}}/{dst}/" + ("scale" if is_norm else "kernel"), (lambda a: a) if is_norm else _linear)))
        rules.append((p + rf"encoder\.layers\.(\d+)\.{s}\.bias", one(f"layer_{{0}}/{dst}/bias")))
    return rules


def _clip_rules():
    def one(path, fn=lambda a: a):
        return lambda m, a: {path.format(*m.groups()): fn(a)}

    p = r"(?:text_model\.)?"
    return [
        (p + r"embeddings\.token_embedding\.weight", one("token_embedding/embedding")),
        (p + r"embeddings\.position_embedding\.weight", one("position_embedding")),
        (p + r"final_layer_norm\.weight", one("final_layer_norm/scale")),
        (p + r"final_layer_norm\.bias", one("final_layer_norm/bias")),
    ] + _clip_layer_rules(p)


def _clip_vision_rules():
    def one(path, fn=lambda a: a):
        return lambda m, a: {path.format(*m.groups()): fn(a)}

    def patch(a):  # conv [C, 3, P, P] -> dense kernel [(py, px, c), C]
        return np.asarray(a).transpose(2, 3, 1, 0).reshape(-1, a.shape[0])

    p = r"(?:vision_model\.)?"
    rules = [
        (p + r"embeddings\.class_embedding", one("class_embedding")),
        (p + r"embeddings\.patch_embedding\.weight", one("patch_embed/kernel", patch)),
        (p + r"embeddings\.position_embedding\.weight", one("position_embedding")),
        (r"visual_projection\.weight", one("visual_projection/kernel", _linear)),
    ]
    for ln in ("pre_layrnorm", "post_layernorm"):
        rules.append((p + rf"{ln}\.weight", one(f"{ln}/scale")))
        rules.append((p + rf"{ln}\.bias", one(f"{ln}/bias")))
    return rules + _clip_layer_rules(p)


_CLIP_IGNORED = re.compile(r"(text_model\.)?embeddings\.position_ids|vision_model\..*|visual_projection\..*|text_projection\..*|logit_scale")
_CLIP_VISION_IGNORED = re.compile(r"(vision_model\.)?embeddings\.position_ids|text_model\..*|text_projection\..*|logit_scale")


def _map_strict(tensors, rules, ignored, template, source: str, param_dtype):
    flat_template = {"/".join(k): v for k, v in traverse_util.flatten_dict(template).items()}
    out, unexpected, misshaped = {}, [], []
    for key, arr in tensors.items():
        for pattern, fn in rules:
            m = re.fullmatch(pattern, key)
            if m:
                for path, value in fn(m, arr).items():
                    out[path] = value
                break
        else:
            if not ignored.fullmatch(key):
                unexpected.append(key)
    for path, value in list(out.items()):
        if path not in flat_template:
            unexpected.append(path)
            del out[path]
        elif tuple(flat_template[path].shape) != tuple(np.shape(value)):
            misshaped.append(f"{path}: file {tuple(np.shape(value))} vs model {tuple(flat_template[path].shape)}")
    missing = sorted(set(flat_template) - set(out))
    if missing or unexpected or misshaped:
        lines = [f"{source}: weights do not match the architecture"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(sorted(items)[:20]) + (" ..." if len(items) > 20 else ""))
        raise EncoderWeightsError("\n".join(lines))
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v, param_dtype) for k, v in out.items()})
    return {"params": nested}


def _read_config(directory: Path) -> dict:
    f = directory / "config.json"
    if not f.exists():
        raise EncoderWeightsError(f"{f}: config.json not found")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise EncoderWeightsError(f"{f}: invalid JSON ({e})") from e


def dinov2_config_from_hf(cfg: dict) -> DINOv2Config:
    if cfg.get("use_swiglu_ffn"):
        raise EncoderWeightsError("SwiGLU DINOv2 variants (ViT-g) are not supported")
    return DINOv2Config(
        hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4), patch_size=cfg["patch_size"], image_size=cfg["image_size"],
        num_register_tokens=cfg.get("num_register_tokens", 4), layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        hidden_act=cfg.get("hidden_act", "gelu"),
    )


def clip_text_config_from_hf(cfg: dict) -> CLIPTextConfig:
    cfg = cfg.get("text_config", cfg)
    return CLIPTextConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
        max_position_embeddings=cfg["max_position_embeddings"], hidden_act=cfg.get("hidden_act", "quick_gelu"),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
    )


def clip_vision_config_from_hf(cfg: dict) -> CLIPVisionConfig:
    """From a CLIPModel config (`vision_config` + top-level `projection_dim`) or a CLIPVisionModelWithProjection one."""
    vis = cfg.get("vision_config", cfg)
    return CLIPVisionConfig(
        hidden_size=vis["hidden_size"], num_layers=vis["num_hidden_layers"], num_heads=vis["num_attention_heads"],
        intermediate_size=vis["intermediate_size"], patch_size=vis["patch_size"], image_size=vis["image_size"],
        projection_dim=cfg.get("projection_dim", vis.get("projection_dim", 512)),
        hidden_act=vis.get("hidden_act", "quick_gelu"), layer_norm_eps=vis.get("layer_norm_eps", 1e-5),
    )


def _load_hf(directory: Path, model, dummy_input, rules, ignored, param_dtype):
    """Strictly map an HF directory's safetensors onto `model`'s parameter template (built from
    `dummy_input` without allocating) -> params."""
    template = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy_input))["params"]
    return _map_strict(read_safetensors_dir(directory), rules, ignored, template, str(directory), param_dtype)


def load_dinov2(directory: str | Path, dtype=jnp.float32, param_dtype=jnp.float32):
    """-> (DINOv2 module, params) from an HF-format directory."""
    directory = Path(directory)
    config = dinov2_config_from_hf(_read_config(directory))
    model = DINOv2(config, dtype=dtype)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3))
    return model, _load_hf(directory, model, dummy, _dinov2_rules(config.num_layers), _DINOV2_IGNORED, param_dtype)


def load_clip_text(directory: str | Path, dtype=jnp.float32, param_dtype=jnp.float32):
    """-> (CLIPTextEncoder module, params) from an HF-format directory (CLIPTextModel or CLIPModel)."""
    directory = Path(directory)
    config = clip_text_config_from_hf(_read_config(directory))
    model = CLIPTextEncoder(config, dtype=dtype)
    dummy = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    return model, _load_hf(directory, model, dummy, _clip_rules(), _CLIP_IGNORED, param_dtype)


def load_clip_image(directory: str | Path, dtype=jnp.float32, param_dtype=jnp.float32):
    """-> (CLIPVisionEncoder module, params) from an HF-format directory (CLIPModel or
    CLIPVisionModelWithProjection: the tower and `visual_projection`)."""
    directory = Path(directory)
    config = clip_vision_config_from_hf(_read_config(directory))
    model = CLIPVisionEncoder(config, dtype=dtype)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3))
    return model, _load_hf(directory, model, dummy, _clip_vision_rules(), _CLIP_VISION_IGNORED, param_dtype)


def load_clip_text_projection(directory: str | Path) -> jax.Array:
    """CLIP's `text_projection` of a CLIPModel / CLIPTextModelWithProjection directory as a [C, P] matrix."""
    directory = Path(directory)
    tensors = read_safetensors_dir(directory)
    if "text_projection.weight" not in tensors:
        raise EncoderWeightsError(f"{directory}: no text_projection.weight (a CLIPModel or CLIPTextModelWithProjection checkpoint is needed for CLIP scores)")
    return jnp.asarray(_linear(tensors["text_projection.weight"]), jnp.float32)
