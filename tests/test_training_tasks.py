"""Each tiny training task through compile_train: boxed params, deterministic batches, the loss falls
on a fixed batch, EMA follows, metrics are finite. One device; shapes shrunk further for CPU time."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from trellis_jax.config_loader import apply_overrides, load_config
from trellis_jax.training import sharding as sh
from trellis_jax.training.trainer import TrainState, build_task, compile_train, frozen_inputs

SMALL = {
    "ss_flow": ["model.args.model_channels=32", "model.args.num_blocks=1", "optimizer.lr=1e-2"],
    "slat_flow": ["model.args.model_channels=32", "model.args.num_blocks=1", "data.capacity=64", "optimizer.lr=1e-2"],
    "ss_vae": ["data.resolution=16", "optimizer.lr=1e-2"],
    "slat_vae": ["model.encoder.args.model_channels=32", "model.decoder.args.model_channels=32", "model.encoder.args.num_blocks=1",
                 "model.decoder.args.num_blocks=1", "data.capacity=96", "data.render_size=16", "optimizer.lr=1e-2"],
    "rf_decoder": ["data.capacity=96", "render.image_size=24", "optimizer.lr=3e-3"],
    "mesh_decoder": ["data.capacity=48", "render.image_size=16", "optimizer.lr=3e-4"],
}
STEPS = 25


@pytest.fixture(scope="module")
def mesh():
    return sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize("name,dtype", [("ss_flow", "float32"), ("slat_flow", "float32"), ("ss_vae", "float32"),
                                        ("slat_vae", "float32"), ("ss_flow", "bfloat16"), ("rf_decoder", "float32"),
                                        pytest.param("mesh_decoder", "float32", marks=pytest.mark.slow)])
def test_tiny_task_learns_a_fixed_batch(name, dtype, mesh):
    cfg = apply_overrides(load_config(f"experiments/train/{name}.py:tiny"),
                          SMALL[name] + ["ema.decay=0.5", "init_rng_impl=rbg", f"compute_dtype={dtype}"])
    task = build_task(cfg)
    boxed = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    boxes = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert any(isinstance(b, nn.Partitioned) for b in boxes)

    b1, b2 = task.synthetic_batch(cfg.batch_size, 7), task.synthetic_batch(cfg.batch_size, 7)
    assert all(isinstance(v, np.ndarray) for v in b1.values())
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    assert not np.array_equal(next(iter(task.synthetic_batch(cfg.batch_size, 8).values())), next(iter(b1.values())))

    rules = sh.rules_from_config(cfg)
    init_fn, step_fn, shardings = compile_train(cfg, task, mesh, rules)
    state = init_fn(jax.random.PRNGKey(0))
    assert isinstance(state, TrainState) and int(state.step) == 0
    batch = sh.shard_batch(b1, mesh)
    frozen = frozen_inputs(task, mesh, rules)  # {} for synthetic condition tokens; the decoders' frozen encoder
    eval_loss = jax.jit(lambda p, b: task.loss(p, b, jax.random.PRNGKey(123), frozen)[0])
    before = float(eval_loss(state.params, batch))
    init_params = jax.tree.map(np.asarray, state.params)
    losses = []
    for _ in range(STEPS):
        state, m = step_fn(state, batch, frozen)
        assert m["finite"] == 1.0 and np.isfinite(float(m["grad_norm"]))
        losses.append(float(m["loss"]))
    after = float(eval_loss(state.params, batch))
    assert int(state.step) == STEPS
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))  # fp32 master weights
    assert after < 0.85 * before, (name, before, after, losses)
    # EMA (decay 0.5 here) sits between the initial and the current params, close to the current ones
    leaf = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    p, e, p0 = leaf(state.params), leaf(state.ema_params), leaf(init_params)
    assert np.linalg.norm(e - p) < np.linalg.norm(p0 - p)
    assert not np.allclose(e, p)


@pytest.mark.parametrize("spec,count", [("ss_flow.py:img_L", 559_737_864), ("slat_flow.py:img_L", 600_432_520),
                                        ("slat_flow.py:txt_XL", 1_073_414_408)])
def test_released_training_configs_build_the_released_models(spec, count):
    """Released-size training configs wire the released model args (shapes only; condition tokens synthetic)."""
    cfg = apply_overrides(load_config(f"experiments/train/{spec}"), ["cond.kind=random", "cond.tokens=2"])
    assert cfg.compute_dtype == "bfloat16" and cfg.data.kind == "grain" and cfg.p_uncond == 0.1
    assert cfg.optimizer.lr == 1e-4 and cfg.ema.decay == 0.9999 and cfg.optimizer.clip.kind == "adaptive"
    task = build_task(cfg)
    shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes))) == count


def _frozen_encoder_steps(cfg, mesh, compiles, batch_size: int, input_key: str, encoder_jit: str, perturb):
    """Three steps of a task whose frozen condition/feature encoder runs inside the jitted step: the encoder's
    params are a separate, replicated argument, not in the trained state; the step compiles once and the
    encoder never on its own; the input under `input_key` changes the loss (perturb) and no gradient reaches
    the encoder (stop_gradient). Returns (task, final state, first batch)."""
    task = build_task(cfg)
    rules = sh.rules_from_config(cfg)
    init_fn, step_fn, _ = compile_train(cfg, task, mesh, rules)
    state = init_fn(jax.random.PRNGKey(0))
    frozen = frozen_inputs(task, mesh, rules)
    n_model = len(jax.tree.leaves(jax.eval_shape(task.init_params, jax.random.PRNGKey(0))))
    assert len(jax.tree.leaves(state.params)) == n_model  # the encoder is not in the trained state
    assert len(jax.tree.leaves(frozen)) == len(jax.tree.leaves(task.frozen_shapes())) > 0
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(frozen))
    batches = [task.synthetic_batch(batch_size, i) for i in range(3)]
    for b in batches:
        state, m = step_fn(state, sh.shard_batch(b, mesh), frozen)
        assert m["finite"] == 1.0
    assert compiles.count("jit(step)") == 1 and compiles.count(encoder_jit) == 0, compiles
    key = jax.random.PRNGKey(1)
    loss = jax.jit(lambda p, b, f: task.loss(p, b, key, f)[0])
    b = sh.shard_batch(batches[0], mesh)
    other = dict(b, **{input_key: perturb(b[input_key])})
    assert float(loss(state.params, b, frozen)) != float(loss(state.params, other, frozen))  # the input is encoded
    g = jax.grad(lambda f: loss(state.params, b, f))(frozen)
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g))  # stop_gradient: no gradient reaches it
    return task, state, batches[0]


def test_frozen_image_encoder_runs_inside_the_step_compiled_once(mesh, compiles):
    """cond.kind=image: the batch carries cond_image and the frozen DINOv2 runs inside the jitted step."""
    cfg = apply_overrides(load_config("experiments/train/ss_flow.py:tiny"), SMALL["ss_flow"] + [
        "cond.kind=image", "cond.arch=tiny", "model.args.cond_channels=64", "batch_size=2", "init_rng_impl=rbg"])
    _, _, batch = _frozen_encoder_steps(cfg, mesh, compiles, 2, "cond_image", "jit(tokens)", lambda x: 1.0 - x)
    assert batch["cond_image"].shape == (2, 70, 70, 3) and "cond" not in batch


@pytest.mark.parametrize("name", ["rf_decoder", pytest.param("mesh_decoder", marks=pytest.mark.slow)])
def test_decoder_frozen_encoder_runs_inside_the_step_compiled_once(name, mesh, compiles, tmp_path):
    """rf/mesh decoder: the batch carries the voxel features (no latents) and the frozen SLat encoder runs
    inside the jitted step, so it is neither in the checkpoint nor in the exported models."""
    from trellis_jax.training.trainer import export_models

    cfg = apply_overrides(load_config(f"experiments/train/{name}.py:tiny"), SMALL[name] + ["init_rng_impl=rbg"])
    task, state, batch = _frozen_encoder_steps(cfg, mesh, compiles, cfg.batch_size, "feats", "jit(encode)", lambda x: -x)
    assert batch["feats"].shape[-1] == task.encoder.in_channels and "latents" not in batch
    paths = export_models(cfg, task, state, tmp_path)
    assert [p.name for p in paths] == [f"{cfg.model.decoder.checkpoint}.json"]


def test_slat_vae_exports_official_checkpoints_and_reconstructs(tmp_path):
    """The trainer's export writes the encoder/decoder as official-format checkpoints that the official
    loader reads back to the same weights; the synthetic target view is the voxels it was drawn from
    (non-empty, inside the image); `reconstruct` renders the posterior mean from several cameras."""
    from trellis_jax.checkpoints import load_model
    from trellis_jax.training.trainer import export_models, initial_params

    cfg = apply_overrides(load_config("experiments/train/slat_vae.py:tiny"), SMALL["slat_vae"] + ["export_params=params"])
    task = build_task(cfg)
    params = initial_params(cfg, task)
    state = TrainState(step=np.int32(0), params=params, opt_state=None, ema_params=None, rng=None)
    paths = export_models(cfg, task, state, tmp_path / "ckpts")
    assert sorted(p.name for p in paths) == ["slat_dec_gs_tiny.json", "slat_enc_tiny.json"]
    for role, name in (("encoder", "slat_enc_tiny"), ("decoder", "slat_dec_gs_tiny")):
        _, loaded = load_model(tmp_path / "ckpts" / name)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params[role])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    b = task.synthetic_batch(2, 0)
    n = b["mask"].sum(1)
    assert np.all(n > 8) and np.all(b["coords"][b["mask"]] < 16) and not np.any(b["feats"][~b["mask"]])
    assert np.all(b["alpha"].mean((1, 2)) > 0.02) and np.all(b["alpha"][:, [0, -1], :] == 0)  # object inside the frame
    assert set(np.unique(b["alpha"])) <= {0.0, 1.0} and np.all(b["image"][b["alpha"] == 0] == 0)
    V = 3
    rgb = task.reconstruct(params, b["coords"][:1], b["feats"][:1], b["mask"][:1], np.repeat(b["extrinsics"][:1], V, 0),
                           np.repeat(b["intrinsics"][:1], V, 0))
    assert rgb.shape == (V, 16, 16, 3) and np.all(np.isfinite(np.asarray(rgb)))
    np.testing.assert_allclose(rgb[0], rgb[2], atol=1e-6)  # same camera, same (deterministic) image
