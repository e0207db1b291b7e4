"""Condition encoders as used by the pipelines: image -> DINOv2 tokens, text -> CLIP tokens.

`ImageConditioner` preprocesses images as the reference's `preprocess_image` (alpha bbox crop ×1.2,
resize, alpha-premultiply; docs/reference_facts.md#conditions) and returns LayerNorm(x_prenorm) tokens; the negative condition is
zeros. `TextConditioner` tokenizes (77 tokens) and returns CLIP's last hidden state; the negative
condition is the encoding of "". Pretrained weights are read from local HF-format directories;
without them a randomly initialised, frozen encoder of the requested architecture is used and
`pretrained` is False — callers must say so (nothing falls back silently).

Conditioners are immutable; each one's jitted encoder is built on first use (`functools.cached_property`,
the codebase's one idiom for a jitted function of a frozen object) and reused by every later call, so
encoding many batches of one shape compiles once. `tokens(params, x)` is the same computation as a
pure function, for use inside other jitted functions (the trainer's step).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from trellis_jax.encoders.clip_text import CLIP_VIT_L14_TEXT, CLIPTextConfig, CLIPTextEncoder, text_condition
from trellis_jax.encoders.dinov2 import VITL14_REG, DINOv2, DINOv2Config, image_condition

TINY_DINOV2 = DINOv2Config(hidden_size=64, num_layers=1, num_heads=4, patch_size=14, image_size=70, num_register_tokens=4)
TINY_CLIP = CLIPTextConfig(hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128)


def to_rgba(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGBA. 16-bit grey ('I;16*', or 'I' holding values > 255) is scaled by
    255/65535 first: PIL's own convert clips it, turning nearly every pixel white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        a = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or a.max() > 255:
            a = a * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        raise ValueError("floating-point images are not supported; save the image as 8- or 16-bit PNG")
    return image.convert("RGBA")


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> float32 [size, size, 3] in [0, 1], alpha-premultiplied, cropped around the object.

    RGBA with a non-trivial alpha: square crop centred on the bbox of alpha > 0.8, side 1.2·max(w, h)
    (may extend past the image; outside is transparent). RGB input has no background removal here
    (the reference uses rembg, which needs a model download): the whole image is used as is.
    """
    img = to_rgba(image)
    a = np.asarray(img)[..., 3]
    if a.min() < 255:
        ys, xs = np.nonzero(a > 0.8 * 255)
        if len(xs) == 0:
            raise ValueError("image alpha channel has no foreground (alpha > 0.8)")
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        side = int(1.2 * max(xs.max() - xs.min(), ys.max() - ys.min()))
        box = (int(cx - side / 2), int(cy - side / 2), int(cx - side / 2) + side, int(cy - side / 2) + side)
        img = img.crop(box)
    img = img.resize((size, size), Image.LANCZOS)
    rgba = np.asarray(img, np.float32) / 255.0
    return rgba[..., :3] * rgba[..., 3:4]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageConditioner:
    model: DINOv2
    params: Any
    pretrained: bool
    description: str

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def tokens(self, params, images: jax.Array) -> jax.Array:
        """Pure: images [B, S, S, 3] preprocessed (float in [0, 1]) -> tokens [B, T, C] float32."""
        return image_condition(self.model, params, images)

    @functools.cached_property
    def _encode(self):
        return jax.jit(self.tokens)

    def encode_arrays(self, images: np.ndarray) -> jax.Array:
        """[B, S, S, 3] preprocessed -> [B, T, C] (jitted once per conditioner; per input shape)."""
        return self._encode(self.params, jnp.asarray(images, jnp.float32))

    def __call__(self, images: Sequence[Image.Image]) -> jax.Array:
        return self.encode_arrays(np.stack([preprocess_image(im, self.image_size) for im in images]))

    def negative(self, batch: int) -> jax.Array:
        cfg = self.model.config
        return jnp.zeros((batch, cfg.num_tokens, cfg.hidden_size), jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class TextConditioner:
    model: CLIPTextEncoder
    params: Any
    tokenizer: Any
    pretrained: bool
    description: str

    def tokens(self, params, input_ids: jax.Array) -> jax.Array:
        """Pure: token ids int32 [B, 77] -> last hidden state [B, 77, C] float32."""
        return text_condition(self.model, params, input_ids)

    @functools.cached_property
    def _encode(self):
        return jax.jit(self.tokens)

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """Host-side tokenisation: texts -> int32 [B, 77]."""
        return np.asarray(self.tokenizer([str(t) for t in texts]), np.int32)

    def __call__(self, texts: Sequence[str]) -> jax.Array:
        """texts -> [B, 77, C] (jitted once per conditioner; per batch size)."""
        return self._encode(self.params, jnp.asarray(self.token_ids(texts)))

    def negative(self, batch: int) -> jax.Array:
        return jnp.repeat(self([""]), batch, axis=0)


def encode_conditions(cond_model, prompts: Sequence, *, multi_image: bool = False, copies: int = 1):
    """Prompts (PIL images or texts) -> (cond, neg), the sampler's condition inputs.

    Plain: cond [len(prompts)·copies, T, C], each prompt repeated `copies` times in a row. multi_image:
    all prompts condition ONE asset, cond [copies, K, T, C]. neg: the unconditional tokens [B, T, C]."""
    cond = np.asarray(cond_model(list(prompts)))
    cond = np.broadcast_to(cond[None], (copies,) + cond.shape) if multi_image else np.repeat(cond, copies, axis=0)
    return cond, cond_model.negative(cond.shape[0])


IMAGE_ARCHS = {"vitl14_reg": VITL14_REG, "tiny": TINY_DINOV2}
TEXT_ARCHS = {"vitl14": CLIP_VIT_L14_TEXT, "tiny": TINY_CLIP}


def encoder_module(kind: str, arch: str):
    """The frozen encoder network of a condition: 'image' -> DINOv2(IMAGE_ARCHS[arch]), 'text' -> CLIP text."""
    archs = {"image": IMAGE_ARCHS, "text": TEXT_ARCHS}[kind]
    if arch not in archs:
        raise ValueError(f"unknown {kind} encoder arch {arch!r}; choose from {sorted(archs)}")
    return DINOv2(archs[arch]) if kind == "image" else CLIPTextEncoder(archs[arch])


def example_input(model) -> jax.Array:
    """A batch-1 input of the encoder (image [1, S, S, 3] or token ids [1, 77])."""
    if isinstance(model, DINOv2):
        return jnp.zeros((1, model.config.image_size, model.config.image_size, 3), jnp.float32)
    return jnp.zeros((1, 77), jnp.int32)


def random_params(model, seed: int, abstract: bool = False):
    """Randomly initialised (unboxed) encoder params; `abstract`: only their ShapeDtypeStructs (no compute)."""
    import flax.linen as nn

    init = lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(seed), example_input(model)))
    return jax.eval_shape(init) if abstract else init()


def load_image_conditioner(weights: str | Path | None = None, arch: str = "vitl14_reg", seed: int = 0) -> ImageConditioner:
    """Pretrained DINOv2 from an HF-format dir, else a frozen random encoder of `arch` ('vitl14_reg' | 'tiny')."""
    if weights:
        from trellis_jax.encoders.hf_weights import load_dinov2

        model, params = load_dinov2(weights)
        return ImageConditioner(model, params, True, f"DINOv2 from {weights}")
    model = encoder_module("image", arch)
    params = random_params(model, seed)
    return ImageConditioner(model, params, False, f"RANDOM frozen DINOv2 ({arch}, seed {seed}); no pretrained weights given")


def load_text_conditioner(weights: str | Path | None = None, arch: str = "vitl14", seed: int = 0, vocab=None) -> TextConditioner:
    """Pretrained CLIP text tower from an HF-format dir, else a frozen random one ('vitl14' | 'tiny')."""
    from trellis_jax.encoders.clip_tokenizer import CLIPTokenizer

    tok = CLIPTokenizer(vocab)
    if weights:
        from trellis_jax.encoders.hf_weights import load_clip_text

        model, params = load_clip_text(weights)
        return TextConditioner(model, params, tok, True, f"CLIP text from {weights}")
    model = encoder_module("text", arch)
    params = random_params(model, seed)
    return TextConditioner(model, params, tok, False, f"RANDOM frozen CLIP text ({arch}, seed {seed}); no pretrained weights given")


def conditioner_from_pipeline(directory: Path, raw: dict):
    """The condition encoder a pipeline directory asks for (our pipeline.json may carry
    `cond_encoder: {kind, arch, seed, weights}` for demo pipelines with a random frozen encoder)."""
    args = raw.get("args", raw)
    spec = args.get("cond_encoder")
    if spec:
        w = spec.get("weights")
        w = str(directory / w) if w else None
        if spec["kind"] == "image":
            return load_image_conditioner(w, spec.get("arch", "vitl14_reg"), spec.get("seed", 0))
        return load_text_conditioner(w, spec.get("arch", "vitl14"), spec.get("seed", 0))
    return None
