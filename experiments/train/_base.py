"""Settings shared by every training config: optimizer, EMA, logging, checkpoints, mesh
(optimizer defaults: docs/reference_facts.md#optimizer).

Task configs start from get_config() here (through flow_run or vae_run) and add `task`,
`model`, `data` and the task's own keys. Any key can be overridden on the command line:
`--config.optimizer.lr=3e-4`; an unknown key is an error naming it.
"""
from pathlib import Path

import ml_collections

from trellis_jax.config_loader import load_config

# Released flow variants -> (condition kind, global batch). The paper states 256 for the XL model
# (64 GPUs x 4); the others' GPU counts are not published, so the per-GPU batch of the reference
# configs x 32 GPUs is used as a starting point.
FLOW_VARIANTS = {"img_L": ("image", 256), "txt_B": ("text", 512), "txt_L": ("text", 256), "txt_XL": ("text", 256)}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.total_steps = 1_000_000          # reference max_steps
    c.batch_size = 8                   # global batch (split over the mesh's data x fsdp axes)
    c.batch_split = 1                  # gradient accumulation: micro-batches per step (reference `batch_split`)
    c.compute_dtype = "float32"        # model compute dtype; params (master weights) stay float32
    # PRNG of the parameter init. 'rbg' compiles ~10x faster on CPU (one op per tensor instead of an
    # unrolled threefry) but its values may depend on the sharding; threefry is sharding-invariant.
    c.init_rng_impl = "threefry2x32"
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
        # adaptive: threshold min(max_norm, percentile of the last buffer_size finite norms) once full
        clip=dict(kind="adaptive", max_norm=1.0, percentile=95.0, buffer_size=1000),
    ))
    c.ema = ml_collections.ConfigDict(dict(decay=0.9999))
    c.log_every = 500                  # tensorboard scalars (per-step losses always go to metrics.jsonl)
    c.ckpt_every = 10_000
    c.keep_checkpoints = 3
    c.export_params = "ema"            # weights written to WORKDIR/ckpts at the end: 'ema' (as released) or 'params'
    c.async_checkpoints = True
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict({"rules": None})   # None: trellis_jax.training.sharding.DEFAULT_RULES
    c.distributed = None               # None: auto (coordinator env vars); True on every host of a pod slice
    return c


def condition(kind: str) -> ml_collections.ConfigDict:
    """Frozen condition encoder of a flow model: DINOv2 ViT-L/14-reg image tokens (1374), CLIP ViT-L/14
    text tokens (77), or 'random' synthetic tokens (8) for the CPU `tiny` variants."""
    if kind == "random":
        return ml_collections.ConfigDict(dict(kind="random", arch="", weights="", tokens=8))
    arch = {"image": "vitl14_reg", "text": "vitl14"}[kind]
    return ml_collections.ConfigDict(dict(kind=kind, arch=arch, weights="", tokens=1374 if kind == "image" else 77))


def flow_run(task: str, variant: str, data: dict) -> ml_collections.ConfigDict:
    """What the G_S and G_L training configs share: these settings, `task`, the model's args from
    experiments/models/<task>.py:<variant>, CFG condition dropout 0.1, t = sigmoid(N(1, 1)), `data`;
    then the `tiny` run settings with synthetic conditions, or a released variant's condition encoder,
    global batch and bfloat16 compute."""
    if variant not in list(FLOW_VARIANTS) + ["tiny"]:
        raise KeyError(f"unknown {task} training variant {variant!r}; choose from {sorted(list(FLOW_VARIANTS) + ['tiny'])}")
    c = get_config()
    c.task = task
    c.model = load_config(f"{Path(__file__).resolve().parent.parent / 'models' / task}.py:{variant}")
    # How the block stack is compiled (module compute fields, not checkpoint args: exports keep the
    # released json): one nn.scan over the blocks, and what a rematerialised block keeps
    # (model.args.use_checkpoint turns remat on, as the reference's flag).
    c.model.scan_blocks = False
    c.model.remat_policy = "nothing_saveable"
    c.p_uncond = 0.1                   # condition dropout for CFG
    c.t_mean, c.t_std = 1.0, 1.0       # t = sigmoid(N(t_mean, t_std))
    c.data = ml_collections.ConfigDict(data)
    if variant == "tiny":
        tiny_run(c, batch_size=4, total_steps=200)
        c.cond = condition("random")
    else:
        kind, c.batch_size = FLOW_VARIANTS[variant]
        c.compute_dtype = "bfloat16"
        c.cond = condition(kind)
    return c


def vae_run(task: str, variant: str, models: str, decoder: str) -> ml_collections.ConfigDict:
    """What the VAE and decoder training configs share: these settings, `task`, and model.encoder /
    model.decoder from experiments/models/<models>.py — `enc` and `decoder` for `released` (bfloat16
    compute), `tiny_enc` and `tiny_<decoder>` for `tiny`. The caller adds loss, data and run sizes."""
    if variant not in ("released", "tiny"):
        raise KeyError(f"unknown {task} training variant {variant!r}; choose from ['released', 'tiny']")
    c = get_config()
    c.task = task
    path = Path(__file__).resolve().parent.parent / "models" / f"{models}.py"
    prefix = "" if variant == "released" else "tiny_"
    c.model = ml_collections.ConfigDict(dict(encoder=load_config(f"{path}:{prefix}enc"), decoder=load_config(f"{path}:{prefix}{decoder}")))
    if variant == "released":
        c.compute_dtype = "bfloat16"
    return c


def tiny_run(c: ml_collections.ConfigDict, batch_size: int, total_steps: int) -> None:
    """Run settings of the `tiny` CPU variants: a few hundred steps at lr 1e-3, a fast EMA, every step
    logged, a checkpoint every 50 steps, synthetic data read in-process."""
    c.batch_size, c.total_steps = batch_size, total_steps
    c.optimizer.lr = 1e-3
    c.ema.decay = 0.99
    c.log_every, c.ckpt_every, c.keep_checkpoints = 1, 50, 2
    c.data.kind, c.data.worker_count = "synthetic", 0
