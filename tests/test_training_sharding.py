"""Mesh construction, logical-axis rules, state/batch shardings on 8 simulated CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from trellis_jax.models.registry import dummy_inputs
from trellis_jax.tools.configs import load_config, model_from_config
from trellis_jax.training import sharding as sh

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices, see conftest.py")


def _mesh(data, fsdp, tensor):
    return sh.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)))


# ------------------------------------------------------------------------------------------------ mesh


@pytest.mark.parametrize(
    "sizes, expect",
    [((2, 2, 2), (2, 2, 2)), ((-1, 1, 1), (8, 1, 1)), ((1, -1, 2), (1, 4, 2)), ((2, 4, -1), (2, 4, 1))],
)
def test_make_mesh_shapes_and_inference(sizes, expect):
    mesh = _mesh(*sizes)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == expect
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_on_a_device_subset():
    mesh = sh.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    assert mesh.devices.shape == (1, 1, 1) and mesh.devices.flat[0] == jax.devices()[0]


@pytest.mark.parametrize(
    "sizes, match",
    [
        ((2, 2, 1), r"= 4 devices, but 8 are available"),
        ((-1, -1, 1), r"at most one mesh axis may be -1"),
        ((3, -1, 1), r"not divisible by the product 3"),
        ((0, 8, 1), r"positive or -1"),
    ],
)
def test_make_mesh_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        _mesh(*sizes)


# ------------------------------------------------------------------------------------------------ rules


def test_rules_from_config_default_and_override():
    assert sh.rules_from_config(ml_collections.ConfigDict()) == sh.DEFAULT_RULES
    cfg = ml_collections.ConfigDict(dict(sharding=dict(rules=[("embed", ["fsdp", "tensor"]), ("norm", None)])))
    assert sh.rules_from_config(cfg) == (("embed", ("fsdp", "tensor")), ("norm", None))
    bad = ml_collections.ConfigDict(dict(sharding=dict(rules=[("embed", "model")])))
    with pytest.raises(ValueError, match=r"unknown mesh axis 'model'"):
        sh.rules_from_config(bad)


def _logical_names(tree):
    names = set()
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned), "every model parameter carries logical axis names"
        names.update(n for n in leaf.names if n is not None)
    return names


@pytest.mark.parametrize(
    "spec",
    ["ss_flow.py:tiny", "slat_flow.py:tiny", "ss_vae.py:tiny_enc", "ss_vae.py:tiny_dec", "slat_vae.py:tiny_enc",
     "slat_vae.py:tiny_dec_gs", "slat_vae.py:tiny_dec_rf", "slat_vae.py:tiny_dec_mesh"],
)
def test_default_rules_cover_every_logical_name(spec):
    model = model_from_config(load_config(f"experiments/models/{spec}"))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model)))
    assert _logical_names(abstract) <= {name for name, _ in sh.DEFAULT_RULES}
    sh.tree_shardings(abstract, _mesh(2, 2, 2), sh.DEFAULT_RULES)  # resolves without error


def _gs_tiny_abstract():
    model = model_from_config(load_config("experiments/models/ss_flow.py:tiny"))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model)))


def test_gs_tiny_param_specs():
    specs = sh.tree_specs(_gs_tiny_abstract(), _mesh(2, 2, 2), sh.DEFAULT_RULES)["params"]
    blk = specs["blocks_0"]
    assert blk["self_attn"]["to_qkv"]["kernel"] == P("fsdp", "tensor")  # [embed, qkv]
    assert blk["self_attn"]["to_qkv"]["bias"] == P("tensor")
    assert blk["self_attn"]["to_out"]["kernel"] == P("tensor", "fsdp")  # [qkv, embed]
    assert blk["cross_attn"]["to_kv"]["kernel"] == P("fsdp", "tensor")  # [cond, qkv]
    assert blk["mlp"]["mlp_0"]["kernel"] == P("fsdp", "tensor")  # [embed, mlp]
    assert blk["mlp"]["mlp_2"]["kernel"] == P("tensor", "fsdp")  # [mlp, embed]
    assert blk["adaLN_modulation_1"]["kernel"] == P("fsdp", "tensor")
    assert blk["norm2"]["scale"] == P(None) and blk["self_attn"]["q_rms_norm"]["gamma"] == P(None, None)
    assert specs["input_layer"]["kernel"] == P(None, "fsdp")  # [io, embed]
    assert specs["out_layer"]["kernel"] == P("fsdp", None)  # [embed, io]
    # [embed, embed]: the second 'embed' finds fsdp taken and stays replicated
    assert specs["t_embedder"]["mlp_2"]["kernel"] == P("fsdp", None)


def test_unknown_logical_name_is_a_clear_error():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x):
            w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "heads")), (4, 8))
            return x @ w

    abstract = jax.eval_shape(lambda: Odd().init(jax.random.key(0), jnp.zeros((1, 4))))
    with pytest.raises(KeyError, match=r"params/w: logical axis 'heads' has no sharding rule"):
        sh.tree_shardings(abstract, _mesh(2, 2, 2), sh.DEFAULT_RULES)


def test_non_divisible_dim_falls_back_to_replication():
    mesh = _mesh(1, 4, 2)
    rules = (("embed", "fsdp"), ("mlp", ("fsdp", "tensor")), ("mlp", "tensor"))
    assert sh.logical_to_spec(("embed", "mlp"), (8, 16), mesh, rules) == P("fsdp", "tensor")
    assert sh.logical_to_spec(("embed", "mlp"), (6, 16), mesh, rules) == P(None, ("fsdp", "tensor"))
    assert sh.logical_to_spec(("embed", "mlp"), (6, 12), mesh, rules) == P(None, "tensor")  # 12 % 8: next rule
    assert sh.logical_to_spec(("embed", "mlp"), (6, 3), mesh, rules) == P(None, None)


def test_state_shardings_boxed_and_unboxed_leaves():
    """Params, Adam moments and EMA inherit the boxes' specs; step/rng/count are replicated."""
    mesh = _mesh(2, 2, 2)

    def init():
        params = _gs_tiny_abstract_init()["params"]
        return dict(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                    opt_state=optax.adamw(1e-4).init(params), ema=jax.tree.map(lambda x: x, params))

    abstract = jax.eval_shape(init)
    shardings = sh.tree_shardings(abstract, mesh, sh.DEFAULT_RULES)
    unboxed = nn.unbox(abstract)
    assert jax.tree.structure(shardings) == jax.tree.structure(unboxed)
    kernel = ("blocks_0", "mlp", "mlp_0", "kernel")
    pick = lambda t: t[kernel[0]][kernel[1]][kernel[2]][kernel[3]]
    assert pick(shardings["params"]).spec == P("fsdp", "tensor")
    assert pick(shardings["ema"]).spec == P("fsdp", "tensor")
    assert pick(shardings["opt_state"][0].mu).spec == P("fsdp", "tensor")
    assert pick(shardings["opt_state"][0].nu).spec == P("fsdp", "tensor")
    assert shardings["opt_state"][0].count.spec == P() and shardings["step"].spec == P() and shardings["rng"].spec == P()
    # placing the concrete unboxed state: every device holds 1/4 of that kernel (fsdp x tensor)
    state = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
    k = pick(state["params"])
    assert k.sharding == NamedSharding(mesh, P("fsdp", "tensor"))
    assert {s.data.shape for s in k.addressable_shards} == {(k.shape[0] // 2, k.shape[1] // 2)}


def _gs_tiny_abstract_init():
    model = model_from_config(load_config("experiments/models/ss_flow.py:tiny"))
    return model.init(jax.random.key(0), *dummy_inputs(model))


# ------------------------------------------------------------------------------------------------ batches


def test_batch_sharding_spec():
    mesh = _mesh(2, 2, 2)
    assert sh.batch_sharding(mesh) == NamedSharding(mesh, P(("data", "fsdp")))


def test_shard_batch_layout():
    mesh = _mesh(2, 2, 2)
    x = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8, 3, 5)
    m = np.arange(8 * 3).reshape(8, 3) % 2 == 0
    out = sh.shard_batch({"x": x, "sub": {"mask": m}, "scale": np.float32(0.5)}, mesh)
    assert out["x"].shape == (8, 3, 5) and out["sub"]["mask"].dtype == np.bool_
    np.testing.assert_array_equal(np.asarray(out["x"]), x)
    np.testing.assert_array_equal(np.asarray(out["sub"]["mask"]), m)
    assert out["scale"].sharding.spec == P() and float(out["scale"]) == 0.5
    # each (data, fsdp) position holds 2 consecutive examples, replicated over its 2 tensor devices
    for i_d in range(2):
        for i_f in range(2):
            rows = slice(4 * i_d + 2 * i_f, 4 * i_d + 2 * i_f + 2)
            for dev in mesh.devices[i_d, i_f]:
                shard = next(s for s in out["x"].addressable_shards if s.device == dev)
                assert shard.index[0] == rows
                np.testing.assert_array_equal(np.asarray(shard.data), x[rows])


def test_shard_batch_rejects_indivisible_batch():
    with pytest.raises(ValueError, match=r"batch leaf x has 6 examples .* not divisible by the 4 batch shards"):
        sh.shard_batch({"x": np.zeros((6, 2))}, _mesh(1, 4, 2))


# ------------------------------------------------------------------------------------------------ multi-host


@pytest.fixture
def fake_distributed(monkeypatch):
    calls = []
    state = {"init": False}

    def initialize(**kw):
        calls.append(kw)
        state["init"] = True

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: state["init"])
    for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS",
              "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    return calls


def test_distributed_off_and_auto_without_env(fake_distributed):
    sh.maybe_initialize_distributed(ml_collections.ConfigDict())
    sh.maybe_initialize_distributed(ml_collections.ConfigDict(dict(distributed=False)))
    sh.maybe_initialize_distributed(ml_collections.ConfigDict(dict(distributed=dict(enabled=None))))
    assert fake_distributed == []


def test_distributed_explicit_and_idempotent(fake_distributed):
    cfg = ml_collections.ConfigDict(dict(distributed=dict(
        enabled=True, coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)))
    sh.maybe_initialize_distributed(cfg)
    sh.maybe_initialize_distributed(cfg)
    assert fake_distributed == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)]


def test_distributed_bool_flag_and_auto_from_env(fake_distributed, monkeypatch):
    sh.maybe_initialize_distributed(ml_collections.ConfigDict(dict(distributed=True)))  # tpu_pod.sh's flag
    assert fake_distributed == [{}]
    fake_distributed.clear()
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    sh.maybe_initialize_distributed(ml_collections.ConfigDict())
    assert fake_distributed == [{}]
