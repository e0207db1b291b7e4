"""Each tiny training task through compile_train: boxed params, deterministic batches, the loss falls
on a fixed batch, EMA follows, metrics are finite. One device; shapes shrunk further for CPU time."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from trellis_jax.config_loader import apply_overrides, load_config
from trellis_jax.training import sharding as sh
from trellis_jax.training.trainer import TrainState, build_task, compile_train

SMALL = {
    "ss_flow": ["model.args.model_channels=32", "model.args.num_blocks=1", "optimizer.lr=1e-2"],
    "slat_flow": ["model.args.model_channels=32", "model.args.num_blocks=1", "data.capacity=64", "optimizer.lr=1e-2"],
    "ss_vae": ["data.resolution=16", "optimizer.lr=1e-2"],
    "rf_decoder": ["data.capacity=96", "render.image_size=24", "optimizer.lr=3e-3"],
    "mesh_decoder": ["data.capacity=48", "render.image_size=16", "optimizer.lr=3e-4"],
}
STEPS = 25


@pytest.fixture(scope="module")
def mesh():
    return sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize("name,dtype", [("ss_flow", "float32"), ("slat_flow", "float32"), ("ss_vae", "float32"),
                                        ("ss_flow", "bfloat16"), ("rf_decoder", "float32"),
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

    init_fn, step_fn, shardings = compile_train(cfg, task, mesh, sh.rules_from_config(cfg))
    state = init_fn(jax.random.PRNGKey(0))
    assert isinstance(state, TrainState) and int(state.step) == 0
    batch = sh.shard_batch(b1, mesh)
    eval_loss = jax.jit(lambda p, b: task.loss(p, b, jax.random.PRNGKey(123))[0])
    before = float(eval_loss(state.params, batch))
    init_params = jax.tree.map(np.asarray, state.params)
    losses = []
    for _ in range(STEPS):
        state, m = step_fn(state, batch)
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
