"""CLIP image tower (HF CLIPModel layout) against an independent numpy forward on random weights.

torch is not in the project venv (and transformers 5 has no Flax CLIP), so the reference is a numpy
re-derivation of HF's CLIPVisionModelWithProjection from the torch key layout.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from trellis_jax.encoders.clip_image import TINY_CLIP_VISION, image_embeddings, preprocess
from trellis_jax.encoders.clip_text import text_embeddings
from trellis_jax.encoders.hf_weights import EncoderWeightsError, load_clip_image, load_clip_text, load_clip_text_projection
from trellis_jax.eval.metrics import clip_score

CFG = TINY_CLIP_VISION
TEXT_FIX = Path(__file__).parent / "fixtures" / "encoders" / "clip_text_tiny"


def _random_clip_model_dir(d: Path, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    C, I, P, G = CFG.hidden_size, CFG.intermediate_size, CFG.patch_size, CFG.grid
    r = lambda *s, sc=0.1: (sc * rng.standard_normal(s)).astype(np.float32)
    t = {
        "vision_model.embeddings.class_embedding": r(C, sc=0.5),
        "vision_model.embeddings.patch_embedding.weight": r(C, 3, P, P, sc=0.05),
        "vision_model.embeddings.position_embedding.weight": r(1 + G * G, C, sc=0.5),
        "vision_model.embeddings.position_ids": np.arange(1 + G * G)[None].astype(np.int64),
        "vision_model.pre_layrnorm.weight": 1 + r(C), "vision_model.pre_layrnorm.bias": r(C),
        "vision_model.post_layernorm.weight": 1 + r(C), "vision_model.post_layernorm.bias": r(C),
        "visual_projection.weight": r(CFG.projection_dim, C),
        "text_projection.weight": r(CFG.projection_dim, 64),
        "logit_scale": np.array(4.6, np.float32),
    }
    for i in range(CFG.num_layers):
        pre = f"vision_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[pre + f"self_attn.{n}.weight"], t[pre + f"self_attn.{n}.bias"] = r(C, C), r(C)
        t[pre + "mlp.fc1.weight"], t[pre + "mlp.fc1.bias"] = r(I, C), r(I)
        t[pre + "mlp.fc2.weight"], t[pre + "mlp.fc2.bias"] = r(C, I), r(C)
        for n in ("layer_norm1", "layer_norm2"):
            t[pre + f"{n}.weight"], t[pre + f"{n}.bias"] = 1 + r(C), r(C)
    d.mkdir(parents=True, exist_ok=True)
    save_file(t, str(d / "model.safetensors"))
    vision = dict(hidden_size=C, num_hidden_layers=CFG.num_layers, num_attention_heads=CFG.num_heads, intermediate_size=I,
                  patch_size=P, image_size=CFG.image_size, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    (d / "config.json").write_text(json.dumps({"vision_config": vision, "projection_dim": CFG.projection_dim}))
    return t


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _numpy_clip_vision(t, pixels_nchw):
    C, P, G, H = CFG.hidden_size, CFG.patch_size, CFG.grid, CFG.num_heads
    B = pixels_nchw.shape[0]
    w = t["vision_model.embeddings.patch_embedding.weight"]
    patches = pixels_nchw.reshape(B, 3, G, P, G, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, G * G, 3 * P * P)
    x = patches @ w.reshape(C, -1).T
    x = np.concatenate([np.broadcast_to(t["vision_model.embeddings.class_embedding"], (B, 1, C)), x], 1)
    x = x + t["vision_model.embeddings.position_embedding.weight"]
    x = _ln(x, t["vision_model.pre_layrnorm.weight"], t["vision_model.pre_layrnorm.bias"])
    lin = lambda h, n: h @ t[n + ".weight"].T + t[n + ".bias"]
    for i in range(CFG.num_layers):
        pre = f"vision_model.encoder.layers.{i}."
        h = _ln(x, t[pre + "layer_norm1.weight"], t[pre + "layer_norm1.bias"])
        q, k, v = (lin(h, pre + f"self_attn.{n}").reshape(B, -1, H, C // H).transpose(0, 2, 1, 3) for n in ("q_proj", "k_proj", "v_proj"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + lin(a.transpose(0, 2, 1, 3).reshape(B, -1, C), pre + "self_attn.out_proj")
        h = _ln(x, t[pre + "layer_norm2.weight"], t[pre + "layer_norm2.bias"])
        h = lin(h, pre + "mlp.fc1")
        x = x + lin(h / (1 + np.exp(-1.702 * h)), pre + "mlp.fc2")
    pooled = _ln(x[:, 0], t["vision_model.post_layernorm.weight"], t["vision_model.post_layernorm.bias"])
    return pooled @ t["visual_projection.weight"].T


def test_clip_image_embeds_match_numpy_reference(tmp_path):
    t = _random_clip_model_dir(tmp_path / "clip")
    model, params = load_clip_image(tmp_path / "clip")
    assert model.config == CFG
    pixels = np.random.default_rng(1).standard_normal((2, 3, CFG.image_size, CFG.image_size)).astype(np.float32)
    got = model.apply(params, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    want = _numpy_clip_vision({k: v.astype(np.float64) for k, v in t.items()}, pixels.astype(np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_clip_score_of_images_and_text(tmp_path):
    _random_clip_model_dir(tmp_path / "clip")
    model, params = load_clip_image(tmp_path / "clip")
    images = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 64, 64, 3)), jnp.float32)
    assert preprocess(images, CFG.image_size).shape == (2, CFG.image_size, CFG.image_size, 3)
    img = image_embeddings(model, params, images)
    np.testing.assert_allclose(clip_score(img, img), [100, 100], rtol=1e-5)

    text_model, text_params = load_clip_text(TEXT_FIX)
    proj = load_clip_text_projection(tmp_path / "clip")  # [64, 32]: the tiny text width to the joint space
    io = np.load(TEXT_FIX / "io.npz")
    ids = io["input_ids"]
    txt = text_embeddings(text_model, text_params, proj, ids)
    pooled = io["last_hidden_state"][np.arange(2), ids.argmax(-1)]
    np.testing.assert_allclose(np.asarray(txt), pooled @ np.asarray(proj), rtol=1e-4, atol=1e-5)
    assert clip_score(img, txt).shape == (2,)


def test_clip_image_strict_loading_names_the_file(tmp_path):
    t = _random_clip_model_dir(tmp_path / "clip")
    del t["vision_model.post_layernorm.bias"]
    save_file(t, str(tmp_path / "clip" / "model.safetensors"))
    with pytest.raises(EncoderWeightsError, match=r"(?s)clip.*missing.*post_layernorm/bias"):
        load_clip_image(tmp_path / "clip")
