"""Training core: rectified-flow formulas, t distribution, condition dropout, EMA, adaptive clip, AdamW, overrides."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from trellis_jax.config_loader import ConfigKeyError, apply_overrides, load_config
from trellis_jax.training import objective, optimizer


def test_interpolation_and_target_hand_values():
    x0, eps, t = jnp.array([[2.0]]), jnp.array([[3.0]]), jnp.array([0.5])
    x_t, v = objective.interpolate(x0, eps, t)
    # x_t = 0.5·2 + (1e-5 + (1 − 1e-5)·0.5)·3 ; v = (1 − 1e-5)·3 − 2
    np.testing.assert_allclose(float(x_t[0, 0]), 1.0 + (1e-5 + 0.99999 * 0.5) * 3.0, rtol=1e-7)
    np.testing.assert_allclose(float(v[0, 0]), 0.99999 * 3.0 - 2.0, rtol=1e-7)
    # endpoints: t=0 is data, t=1 is (almost) pure noise; v is d x_t / dt
    x_t0, _ = objective.interpolate(x0, eps, jnp.array([0.0]))
    x_t1, _ = objective.interpolate(x0, eps, jnp.array([1.0]))
    np.testing.assert_allclose(float(x_t0[0, 0]), 2.0 + 1e-5 * 3.0, rtol=1e-7)
    np.testing.assert_allclose(float(x_t1[0, 0]), 3.0, rtol=1e-7)
    np.testing.assert_allclose(float(x_t1[0, 0] - x_t0[0, 0]), float(v[0, 0]), rtol=1e-6)


def test_t_is_logit_normal_with_configured_moments():
    t = np.asarray(objective.sample_t(jax.random.PRNGKey(0), 200_000, mean=1.0, std=1.0))
    assert t.min() > 0 and t.max() < 1
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 1.0) < 0.01 and abs(logit.std() - 1.0) < 0.01
    # E[sigmoid(N(1,1))] by quadrature
    z = np.linspace(-8, 8, 20001)
    pdf = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    expected = np.trapezoid(pdf / (1 + np.exp(-(1 + z))), z)
    assert abs(t.mean() - expected) < 0.003
    t0 = np.asarray(objective.sample_t(jax.random.PRNGKey(1), 100_000, mean=0.0, std=1.0))
    assert abs(t0.mean() - 0.5) < 0.005


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_condition_dropout_rate(p):
    n = 20_000
    cond = jnp.ones((n, 2, 3))
    neg = jnp.full((1, 2, 3), -7.0)
    out = np.asarray(objective.drop_condition(jax.random.PRNGKey(3), cond, neg, p))
    dropped = np.all(out == -7.0, axis=(1, 2))
    kept = np.all(out == 1.0, axis=(1, 2))
    assert np.all(dropped | kept)  # whole samples are replaced, never mixed
    assert abs(dropped.mean() - p) < 0.01


def test_flow_loss_masked_equals_mse_over_valid_rows():
    rng = jax.random.PRNGKey(5)
    B, L, C = 3, 6, 4
    x0 = jax.random.normal(jax.random.PRNGKey(1), (B, L, C))
    mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]], bool)
    cond = jnp.ones((B, 2, 5))
    w = jnp.linspace(-1, 1, C)

    def vel(x, t, c):
        return x * w + t[:, None, None] + 1000.0 * (~mask)[..., None]  # garbage in padded rows

    loss = objective.flow_loss(vel, x0, cond, jnp.zeros((1, 2, 5)), rng, mask=mask, p_uncond=0.0)
    k_t, k_eps, _ = jax.random.split(rng, 3)
    t = objective.sample_t(k_t, B)
    eps = jax.random.normal(k_eps, x0.shape)
    x_t, target = objective.interpolate(x0, eps, t)
    err = np.asarray((x_t * w + t[:, None, None] - target) ** 2)
    m = np.asarray(mask)
    np.testing.assert_allclose(float(loss), err[m].mean(), rtol=1e-5)


def test_ema_update_formula():
    p = {"w": jnp.full((3,), 2.0)}
    e = {"w": jnp.zeros((3,))}
    for _ in range(10):
        e = optimizer.ema_update(e, p, 0.9)
    np.testing.assert_allclose(np.asarray(e["w"]), 2.0 * (1 - 0.9**10), rtol=1e-6)


def _norm_grad(norm):
    return {"a": jnp.array([norm * 0.6, norm * 0.8])}  # global norm = norm


def test_adaptive_clip_threshold_from_percentile_of_recent_norms():
    tx = optimizer.adaptive_clip(max_norm=10.0, percentile=50.0, buffer_size=4)
    s = tx.init(None)
    upd = jax.jit(tx.update)
    for n in [1.0, 2.0, 3.0, 4.0]:  # buffer not full: threshold = max_norm, nothing clipped
        g, s = upd(_norm_grad(n), s)
        assert float(s.threshold) == 10.0
        np.testing.assert_allclose(float(optimizer.optax.global_norm(g)), n, rtol=1e-6)
    g, s = upd(_norm_grad(5.0), s)  # full: median of [1, 2, 3, 4] = 2.5
    np.testing.assert_allclose(float(s.threshold), 2.5, rtol=1e-6)
    np.testing.assert_allclose(float(optimizer.optax.global_norm(g)), 2.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.norms), [5.0, 2.0, 3.0, 4.0])  # ring buffer overwrote the oldest
    g, s = upd(_norm_grad(float("nan")), s)  # non-finite norms are not recorded
    np.testing.assert_allclose(np.asarray(s.norms), [5.0, 2.0, 3.0, 4.0])
    assert int(s.ptr) == 1 and int(s.count) == 4
    # threshold is capped by max_norm
    tx = optimizer.adaptive_clip(max_norm=1.0, percentile=95.0, buffer_size=2)
    s = tx.init(None)
    for n in [3.0, 4.0, 5.0]:
        g, s = tx.update(_norm_grad(n), s)
    assert float(s.threshold) == 1.0
    np.testing.assert_allclose(float(optimizer.optax.global_norm(g)), 1.0, rtol=1e-6)


def _opt_cfg(**over):
    cfg = load_config("experiments/train/ss_flow.py:tiny")
    return apply_overrides(cfg, [f"{k}={v}" for k, v in over.items()])


def test_adamw_first_step_weight_decay_mask_and_warmup():
    cfg = _opt_cfg(**{"optimizer.lr": 0.1, "optimizer.weight_decay": 0.5, "optimizer.clip.kind": "'none'"})
    tx = optimizer.make_optimizer(cfg)
    params = {"w": jnp.array([1.0, -2.0]), "pos_emb": jnp.array([3.0])}
    grads = {"w": jnp.array([0.3, -4.0]), "pos_emb": jnp.array([0.0])}
    upd, _ = tx.update(grads, tx.init(params), params)
    # Adam's bias-corrected first step is −lr·g/(|g| + eps); decoupled decay −lr·wd·p, not on pos_emb
    np.testing.assert_allclose(np.asarray(upd["w"]), [-0.1 - 0.1 * 0.5 * 1.0, 0.1 - 0.1 * 0.5 * -2.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["pos_emb"]), [0.0])
    cfg = _opt_cfg(**{"optimizer.lr": 1.0, "optimizer.warmup_steps": 4})
    sched = optimizer.lr_schedule(cfg)
    np.testing.assert_allclose([float(sched(i)) for i in range(6)], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_optimizer_minimises_a_quadratic_with_default_clip():
    cfg = _opt_cfg(**{"optimizer.lr": 0.05})
    tx = optimizer.make_optimizer(cfg)
    p = {"x": jnp.array([3.0, -2.0])}
    s = tx.init(p)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: jnp.sum(q["x"] ** 2))(p)
        u, s = tx.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s

    for _ in range(200):
        p, s = step(p, s)
    assert float(jnp.abs(p["x"]).max()) < 0.1
    stats = optimizer.clip_stats(s)
    assert float(stats["clip_threshold"]) == 1.0 and float(stats["grad_norm"]) >= 0


def test_config_overrides_parse_and_unknown_keys_are_named():
    cfg = load_config("experiments/train/ss_flow.py:tiny")
    apply_overrides(cfg, ["model.args.model_channels=32", "total_steps=7", "p_uncond=0.0", "data.kind=grain",
                          "optimizer.lr=3e-4", "distributed=True"])
    assert cfg.model.args.model_channels == 32 and cfg.total_steps == 7 and cfg.p_uncond == 0.0
    assert cfg.data.kind == "grain" and cfg.optimizer.lr == 3e-4 and cfg.distributed is True
    with pytest.raises(ConfigKeyError, match="model.args.model_channel'.*has no field 'model_channel'"):
        apply_overrides(cfg, ["model.args.model_channel=32"])
    with pytest.raises(ConfigKeyError, match="optimiser"):
        apply_overrides(cfg, ["optimiser.lr=1"])
    with pytest.raises(ValueError, match="dotted.key=value"):
        apply_overrides(cfg, ["total_steps"])
    assert isinstance(cfg, ml_collections.ConfigDict)


def test_train_cli_rejects_unknown_keys_naming_them(capsys, tmp_path):
    from trellis_jax import train

    assert train.main(["--config", "experiments/train/ss_flow.py:tiny", "--workdir", str(tmp_path),
                       "--config.model.args.widht=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.args.widht'" in err and "model_channels" in err
    assert train.main(["--config", "experiments/train/ss_flow.py:nope", "--workdir", str(tmp_path)]) == 2
    assert "unknown ss_flow training variant 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started


def test_batch_split_accumulates_the_full_batch_gradient():
    from trellis_jax.training.sharding import make_mesh
    from trellis_jax.training.trainer import accumulated_grad

    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    g = np.random.default_rng(0)
    params = {"w": jnp.asarray(g.standard_normal((3, 2)), jnp.float32)}
    batch = {"x": jnp.asarray(g.standard_normal((8, 3)), jnp.float32), "y": jnp.asarray(g.standard_normal((8, 2)), jnp.float32)}
    seen = []

    def loss(p, b, rng):  # a per-example mean: equal micro-batches average to the full-batch value
        seen.append(b["x"].shape)
        err = b["x"] @ p["w"] - b["y"]
        return jnp.mean(err**2), {"abs": jnp.mean(jnp.abs(err))}

    (l1, m1), g1 = jax.jit(accumulated_grad(loss, 1, mesh))(params, batch, jax.random.PRNGKey(0))
    (l4, m4), g4 = jax.jit(accumulated_grad(loss, 4, mesh))(params, batch, jax.random.PRNGKey(0))
    assert seen[-1] == (2, 3)  # the scanned loss saw micro-batches of 8 / 4 rows
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    np.testing.assert_allclose(m4["abs"], m1["abs"], rtol=1e-6)
    np.testing.assert_allclose(g4["w"], g1["w"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="not divisible"):
        accumulated_grad(loss, 3, mesh)(params, batch, jax.random.PRNGKey(0))
