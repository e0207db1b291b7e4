"""What the trainer needs from a training stage: parameters, a loss, and batches.

    task = build_task(cfg)                      # by cfg.task: 'ss_flow' | 'slat_flow' | 'ss_vae'
    boxed = task.init_params(rng)               # flax params with nn.Partitioned leaves (logical axes)
    frozen = task.frozen_params()               # non-trained params (a frozen condition / SLat encoder) or {}
    loss, metrics = task.loss(params, batch, rng, frozen)   # params unboxed; batch: dict of arrays
    batch = task.synthetic_batch(B, seed)       # dict of np arrays, fixed shapes, deterministic in seed
    loader = task.grain_loader(B, seed)         # grain DataLoader over cfg.data.path (stage-specific)
    batch = task.prepare(batch)                 # host side: grain fields -> step inputs (no network)

Synthetic data is structured, not white noise: each sample is drawn from a fixed low-rank family
(basis fixed by `cfg.data.synthetic_seed`), and its condition tokens are a fixed linear map of the
same code (or, with a frozen encoder, its input image / caption is), so a model can learn both the
distribution and the conditioning.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.training.objective import flow_loss


def np_rng(rng) -> np.random.Generator:
    """numpy Generator from an int seed or a JAX PRNG key (raw uint32 or typed)."""
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    arr = rng
    if hasattr(rng, "dtype") and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        arr = jax.random.key_data(rng)
    return np.random.default_rng(np.asarray(arr, np.uint32).ravel().tolist())


def compute_dtype(cfg):
    import jax.numpy as jnp

    name = cfg.get("compute_dtype", "float32")
    if name not in ("float32", "bfloat16"):  # float16 would need the reference's dynamic loss scaling
        raise ValueError(f"config compute_dtype must be 'float32' or 'bfloat16', got {name!r}")
    return getattr(jnp, name)


def encoder_decoder_models(model_cfg, params) -> dict[str, tuple[str, dict, Any]]:
    """`Task.export_models` of a VAE task: model_cfg.{encoder,decoder} (checkpoint, class_name, args)
    with params {'encoder', 'decoder'}."""
    return {m.checkpoint: (m.class_name, m.args.to_dict(), params[role])
            for role, m in (("encoder", model_cfg.encoder), ("decoder", model_cfg.decoder))}


class Condition:
    """The condition of a flow task; its frozen encoder runs inside the jitted train step.

    cfg.cond.kind: 'random' (synthetic tokens [tokens, cond_channels], a fixed linear map of the
    sample's code, in the batch as `cond`), 'image' (frozen DINOv2 of cfg.cond.arch on the batch's
    `cond_image` [B, S, S, 3]) or 'text' (frozen CLIP text on `input_ids` [B, 77], tokenised on the
    host from the grain batch's `caption`). The encoder params are not trained: the step receives
    them as a separate argument (`frozen_params()`; `frozen_shapes()` without loading them) and
    `tokens(frozen, batch)` applies the encoder under `stop_gradient`. The negative condition
    `negative(frozen)` [1, Lc, Cc] is zeros for image/random and CLIP("") for text
    (docs/reference_facts.md#conditions).
    Pretrained weights (cfg.cond.weights, an HF-format directory) must be of the architecture cfg.cond.arch.
    """

    def __init__(self, cfg, cond_channels: int, code_dim: int):
        c = cfg.cond
        self.kind = c.kind
        if self.kind not in ("random", "image", "text"):
            raise ValueError(f"config cond.kind must be 'random', 'image' or 'text', got {self.kind!r}")
        self.model, self.weights, self.seed = None, c.get("weights") or None, int(cfg.seed)
        if self.kind == "random":
            hidden, tokens = cond_channels, int(c.tokens)
        else:
            from trellis_jax.conditioning import encoder_module

            self.model = encoder_module(self.kind, c.arch)
            hidden = self.model.config.hidden_size
            tokens = self.model.config.num_tokens if self.kind == "image" else 77
        if hidden != cond_channels:
            raise ValueError(f"condition encoder gives {hidden} channels but model.args.cond_channels is {cond_channels}; "
                             f"set --config.model.args.cond_channels={hidden}")
        self.tokens_shape = (tokens, hidden)
        self.tokenizer = None
        if self.kind == "text":
            from trellis_jax.encoders.clip_tokenizer import CLIPTokenizer

            self.tokenizer = CLIPTokenizer(None)
            self._empty_ids = np.asarray(self.tokenizer([""]), np.int32)
        g = np.random.default_rng(int(cfg.data.synthetic_seed) + 1)
        if self.kind == "image":  # synthetic images: a smooth 8x8 RGB pattern per code direction, upsampled
            self._basis = g.standard_normal((code_dim, 8, 8, 3)).astype(np.float32)
        else:
            self._basis = g.standard_normal((code_dim, tokens, hidden)).astype(np.float32) / np.sqrt(code_dim)
        if self.kind == "random":
            self.description = f"random condition tokens [{tokens}, {hidden}] (synthetic data)"
        elif self.weights:
            self.description = f"frozen {c.arch} {self.kind} encoder from {self.weights}, inside the train step"
        else:
            self.description = (f"RANDOM frozen {c.arch} {self.kind} encoder (seed {self.seed}; no pretrained weights "
                                f"given), inside the train step")

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    # -- frozen encoder params (a non-trained argument of the step) ---------------------------
    def frozen_shapes(self) -> Any:
        """ShapeDtypeStructs of the encoder params ({} for 'random'); nothing is loaded or computed."""
        from trellis_jax.conditioning import random_params

        return {} if self.model is None else random_params(self.model, self.seed, abstract=True)

    def frozen_params(self) -> Any:
        """The encoder params ({} for 'random'): pretrained from cfg.cond.weights, else random (cfg.seed)."""
        if self.model is None:
            return {}
        if not self.weights:
            from trellis_jax.conditioning import random_params

            return random_params(self.model, self.seed)
        from trellis_jax.encoders.hf_weights import load_clip_text, load_dinov2

        model, params = (load_dinov2 if self.kind == "image" else load_clip_text)(self.weights)
        if model.config != self.model.config:
            raise ValueError(f"{self.weights}: the {self.kind} encoder weights are {model.config}, not the "
                             f"architecture of config cond.arch ({self.model.config}); set --config.cond.arch")
        return params

    # -- inside the step ------------------------------------------------------------------------
    def tokens(self, frozen, batch: dict) -> jax.Array:
        """Condition tokens [B, Lc, Cc] of a batch (traced; the encoder under stop_gradient)."""
        if self.kind == "random":
            return batch["cond"]
        from trellis_jax.encoders.clip_text import text_condition
        from trellis_jax.encoders.dinov2 import image_condition

        if self.kind == "image":
            out = image_condition(self.model, frozen, batch["cond_image"])
        else:
            out = text_condition(self.model, frozen, batch["input_ids"])
        return jax.lax.stop_gradient(out)

    def negative(self, frozen) -> jax.Array:
        """The unconditional tokens [1, Lc, Cc] (condition dropout for CFG)."""
        if self.kind != "text":
            return jax.numpy.zeros((1,) + self.tokens_shape, jax.numpy.float32)
        from trellis_jax.encoders.clip_text import text_condition

        return jax.lax.stop_gradient(text_condition(self.model, frozen, self._empty_ids))

    # -- host side --------------------------------------------------------------------------------
    def synthetic(self, code: np.ndarray) -> dict[str, np.ndarray]:
        """code [B, k] -> the batch's condition inputs, a fixed function of the code: 'random': cond
        [B, Lc, Cc] (linear map); 'image': cond_image [B, S, S, 3] in [0, 1] (sigmoid of a linear map,
        upsampled); 'text': input_ids [B, 77] of the caption naming the code's largest entry."""
        if self.kind == "random":
            return {"cond": np.einsum("bk,kld->bld", code, self._basis).astype(np.float32)}
        if self.kind == "image":
            small = 1.0 / (1.0 + np.exp(-np.einsum("bk,kxyc->bxyc", code, self._basis)))
            idx = np.arange(self.image_size) * 8 // self.image_size
            return {"cond_image": small[:, idx][:, :, idx].astype(np.float32)}
        return {"input_ids": np.asarray(self.tokenizer([f"a shape of kind {int(np.argmax(c))}" for c in code]), np.int32)}

    def host_inputs(self, batch: dict) -> dict[str, np.ndarray]:
        """A grain batch's condition fields -> the step's condition inputs (no encoder on the host)."""
        if self.kind == "image":
            return {"cond_image": np.asarray(batch["cond_image"], np.float32)}
        if self.kind == "text":
            return {"input_ids": np.asarray(self.tokenizer([str(s) for s in batch["caption"]]), np.int32)}
        raise ValueError("cond.kind='random' is only for data.kind='synthetic'; grain data needs 'image' or 'text'")

    def grain_kwargs(self) -> dict:
        """make_loader arguments for this condition."""
        kw = {"cond": self.kind}
        if self.kind == "image":
            kw["cond_image_size"] = self.image_size
        return kw


class Task:
    """Base class; subclasses set `stage` (grain stage name) and implement the abstract methods."""

    stage: str = ""

    def __init__(self, cfg):
        self.cfg = cfg

    # -- model -------------------------------------------------------------------------------
    def init_params(self, rng) -> Any:
        raise NotImplementedError

    def loss(self, params, batch: dict, rng, frozen=None) -> tuple[jax.Array, dict]:
        """Scalar loss and metrics; `frozen`: the non-trained params (`frozen_params()`), e.g. a condition encoder."""
        raise NotImplementedError

    def frozen_shapes(self) -> Any:
        """ShapeDtypeStructs of the non-trained params the loss needs ({} when none)."""
        return {}

    def frozen_params(self) -> Any:
        """The non-trained params the loss needs ({} when none), passed to the step beside the state."""
        return {}

    def export_models(self, params) -> dict[str, tuple[str, dict, Any]]:
        """{checkpoint name: (class_name, args, params)}: the trained networks, written by the trainer
        at the end of a run as official-format checkpoints (WORKDIR/ckpts/NAME.{json,safetensors})."""
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------
    def synthetic_batch(self, batch_size: int, rng) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def tokens_per_batch(self, batch: dict) -> int:
        """Tokens (latent voxels) the model processed for this batch, for tokens/s."""
        raise NotImplementedError

    def grain_kwargs(self) -> dict:
        return {}

    def grain_loader(self, batch_size: int, seed: int):
        from trellis_jax.data.loaders import make_loader

        d = self.cfg.data
        if not d.path:
            raise ValueError("data.kind='grain' needs --config.data.path=DATASET_DIR (an encoded latent dataset)")
        return make_loader(d.path, self.stage, batch_size=batch_size, shuffle=True, seed=seed,
                           worker_count=int(d.worker_count), max_corrupt_records=int(d.max_corrupt_records),
                           **self.grain_kwargs())

    def prepare(self, batch: dict) -> dict[str, np.ndarray]:
        """Host-side conversion of a grain batch into the step's batch (identity by default); no
        network runs here (frozen encoders run inside the step)."""
        return batch


CODE_DIM = 4  # rank of the synthetic data family (see the module docstring)


class FlowTask(Task):
    """What the two rectified-flow stages share: the velocity model built from cfg.model (compute
    dtype from the config), its condition, and the objective with the config's p_uncond / t_mean / t_std."""

    def __init__(self, cfg):
        super().__init__(cfg)
        args = cfg.model.args.to_dict()
        blocks = {k: cfg.model[k] for k in ("scan_blocks", "remat_policy") if k in cfg.model}
        self.model = build_model(cfg.model.class_name, args, dtype=compute_dtype(cfg), **blocks)
        self.resolution, self.channels = int(args["resolution"]), int(args["in_channels"])
        self.cond = Condition(cfg, int(args["cond_channels"]), CODE_DIM)

    def init_params(self, rng):
        return self.model.init(rng, *dummy_inputs(self.model))

    def export_models(self, params):
        m = self.cfg.model
        return {m.checkpoint: (m.class_name, m.args.to_dict(), params)}

    def frozen_shapes(self):
        return self.cond.frozen_shapes()

    def frozen_params(self):
        return self.cond.frozen_params()

    def grain_kwargs(self):
        return self.cond.grain_kwargs()

    def flow_loss(self, velocity_fn, x0, batch, frozen, rng, mask=None):
        """The rectified-flow loss of x0 under the batch's condition (encoded here, inside the step)."""
        c = self.cfg
        return flow_loss(velocity_fn, x0, self.cond.tokens(frozen, batch), self.cond.negative(frozen), rng, mask=mask,
                         p_uncond=float(c.p_uncond), t_mean=float(c.t_mean), t_std=float(c.t_std))
