"""What the trainer needs from a training stage: parameters, a loss, and batches.

    task = build_task(cfg)                      # by cfg.task: 'ss_flow' | 'slat_flow' | 'ss_vae'
    boxed = task.init_params(rng)               # flax params with nn.Partitioned leaves (logical axes)
    loss, metrics = task.loss(params, batch, rng)   # params unboxed; batch: dict of arrays
    batch = task.synthetic_batch(B, seed)       # dict of np arrays, fixed shapes, deterministic in seed
    loader = task.grain_loader(B, seed)         # grain DataLoader over cfg.data.path (stage-specific)
    batch = task.prepare(batch)                 # host side: grain fields -> model inputs (frozen cond encoder)

Synthetic data is structured, not white noise: each sample is drawn from a fixed low-rank family
(basis fixed by `cfg.data.synthetic_seed`), and its condition tokens are a fixed linear map of the
same code, so a model can learn both the distribution and the conditioning.
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


class Condition:
    """Condition tokens for a flow task.

    cfg.cond.kind: 'random' (synthetic data: tokens [tokens, cond_channels] derived from the sample's
    code), 'image' (frozen DINOv2 on the batch's `cond_image`) or 'text' (frozen CLIP on `caption`).
    `negative` [1, Lc, Cc]: zeros for image/random, CLIP("") for text (SPEC §7.1).
    """

    def __init__(self, cfg, cond_channels: int, code_dim: int):
        c = cfg.cond
        self.kind = c.kind
        if self.kind not in ("random", "image", "text"):
            raise ValueError(f"config cond.kind must be 'random', 'image' or 'text', got {self.kind!r}")
        self.encoder = None
        if self.kind == "image":
            from trellis_jax.conditioning import load_image_conditioner

            self.encoder = load_image_conditioner(c.get("weights") or None, c.arch, seed=int(cfg.seed))
            hidden, tokens = self.encoder.model.config.hidden_size, self.encoder.model.config.num_tokens
        elif self.kind == "text":
            from trellis_jax.conditioning import load_text_conditioner

            self.encoder = load_text_conditioner(c.get("weights") or None, c.arch, seed=int(cfg.seed))
            hidden, tokens = self.encoder.model.config.hidden_size, 77
        else:
            hidden, tokens = cond_channels, int(c.tokens)
        if hidden != cond_channels:
            raise ValueError(f"condition encoder gives {hidden} channels but model.args.cond_channels is {cond_channels}; "
                             f"set --config.model.args.cond_channels={hidden}")
        self.tokens, self.channels = tokens, hidden
        if self.kind == "text":
            self.negative = np.asarray(self.encoder.negative(1), np.float32)
        else:
            self.negative = np.zeros((1, tokens, hidden), np.float32)
        self._basis = None
        if self.kind == "random":
            basis_rng = np.random.default_rng(int(cfg.data.synthetic_seed) + 1)
            self._basis = basis_rng.standard_normal((code_dim, tokens, hidden)).astype(np.float32) / np.sqrt(code_dim)
        if self.encoder is not None:
            self.description = self.encoder.description
        else:
            self.description = f"random condition tokens [{tokens}, {hidden}] (synthetic data)"

    def synthetic(self, code: np.ndarray) -> np.ndarray:
        """code [B, k] -> tokens [B, Lc, Cc] (a fixed linear map of the sample's code)."""
        if self._basis is None:
            raise ValueError(f"synthetic data needs cond.kind='random' (the config has {self.kind!r})")
        return np.einsum("bk,kld->bld", code, self._basis).astype(np.float32)

    def encode(self, batch: dict) -> np.ndarray:
        """A grain batch's condition fields -> tokens [B, Lc, Cc] (frozen encoder, no gradient)."""
        if self.kind == "image":
            return np.asarray(self.encoder.encode_arrays(batch["cond_image"]), np.float32)
        if self.kind == "text":
            return np.asarray(self.encoder([str(s) for s in batch["caption"]]), np.float32)
        raise ValueError("cond.kind='random' is only for data.kind='synthetic'; grain data needs 'image' or 'text'")


class Task:
    """Base class; subclasses set `stage` (grain stage name) and implement the abstract methods."""

    stage: str = ""

    def __init__(self, cfg):
        self.cfg = cfg

    # -- model -------------------------------------------------------------------------------
    def init_params(self, rng) -> Any:
        raise NotImplementedError

    def loss(self, params, batch: dict, rng) -> tuple[jax.Array, dict]:
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
        """Host-side conversion of a grain batch into the loss's inputs (identity by default)."""
        return batch


CODE_DIM = 4  # rank of the synthetic data family (see the module docstring)


class FlowTask(Task):
    """What the two rectified-flow stages share: the velocity model built from cfg.model (compute
    dtype from the config), its condition, and the objective with the config's p_uncond / t_mean / t_std."""

    def __init__(self, cfg):
        super().__init__(cfg)
        args = cfg.model.args.to_dict()
        self.model = build_model(cfg.model.class_name, args, dtype=compute_dtype(cfg))
        self.resolution, self.channels = int(args["resolution"]), int(args["in_channels"])
        self.cond = Condition(cfg, int(args["cond_channels"]), CODE_DIM)

    def init_params(self, rng):
        return self.model.init(rng, *dummy_inputs(self.model))

    def flow_loss(self, velocity_fn, x0, cond, rng, mask=None):
        c = self.cfg
        return flow_loss(velocity_fn, x0, cond, self.cond.negative, rng, mask=mask, p_uncond=float(c.p_uncond),
                         t_mean=float(c.t_mean), t_std=float(c.t_std))
