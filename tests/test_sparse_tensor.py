"""SparseTensor: exact round trip with the reference's packed layout, capacity handling, and
behaviour as a pytree under jit / vmap / grad / NamedSharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests import sparse_reference as ref
from trellis_jax.sparse import (
    CapacityError,
    SparseTensor,
    check_overflow,
    compact,
    downsample,
    full_layout,
    group_norm,
    masked,
    neighbor_map,
    sparse_self_attention,
    submanifold_conv3d,
    swin_layout,
    upsample,
)


@pytest.mark.parametrize("counts", [[5], [7, 0, 3], [0, 0], [1, 16, 9, 2]])
def test_packed_round_trip_is_exact(counts):
    rng = np.random.default_rng(sum(counts))
    coords, feats = ref.random_packed(rng, counts, channels=4, resolution=64)
    st = SparseTensor.from_packed(coords, feats, capacity=16, batch_size=len(counts))
    assert st.coords.shape == (len(counts), 16, 3) and st.feats.shape == (len(counts), 16, 4)
    np.testing.assert_array_equal(np.asarray(st.counts()), counts)
    # valid rows are a prefix in the packed order; padding is zero
    for b, n in enumerate(counts):
        assert np.asarray(st.mask[b, :n]).all() and not np.asarray(st.mask[b, n:]).any()
    assert not np.asarray(st.feats)[~np.asarray(st.mask)].any()
    assert not np.asarray(st.coords)[~np.asarray(st.mask)].any()
    back_coords, back_feats = st.to_packed()
    np.testing.assert_array_equal(back_coords, coords)
    np.testing.assert_array_equal(back_feats, feats)
    assert back_coords.dtype == np.int32 and back_feats.dtype == feats.dtype
    # per-sample view agrees
    cs, fs = st.to_samples()
    again = SparseTensor.from_samples(cs, fs, capacity=16)
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_empty_samples_and_empty_batch():
    st = SparseTensor.from_samples([np.zeros((0, 3)), [[1, 2, 3]]], [np.zeros((0, 2)), np.ones((1, 2))], capacity=4)
    np.testing.assert_array_equal(np.asarray(st.counts()), [0, 1])
    coords, feats = st.to_packed()
    np.testing.assert_array_equal(coords, [[1, 1, 2, 3]])
    empty = SparseTensor.from_packed(np.zeros((0, 4), np.int32), np.zeros((0, 3)), capacity=2, batch_size=3)
    assert empty.mask.shape == (3, 2) and not np.asarray(empty.mask).any()
    assert empty.to_packed()[0].shape == (0, 4)


def test_capacity_overflow_names_the_sample():
    rng = np.random.default_rng(0)
    coords, feats = ref.random_packed(rng, [3, 9, 2], channels=2, resolution=16)
    with pytest.raises(CapacityError, match="sample 1 has 9 voxels, more than the capacity 8"):
        SparseTensor.from_packed(coords, feats, capacity=8)
    SparseTensor.from_packed(coords, feats, capacity=9)  # exactly full is fine


@pytest.mark.parametrize(
    "coords, message",
    [
        ([[1, 0, 0, 0], [0, 0, 0, 1]], "grouped by batch index"),
        ([[0, 0, 0, 64]], r"out of range \[0, 64\)"),
        ([[0, 1, 2, 3], [1, 1, 2, 3], [1, 1, 2, 3]], r"sample 1 lists voxel \[1, 2, 3\] more than once"),
        ([[-1, 0, 0, 0]], "negative batch index"),
    ],
)
def test_bad_packed_input_is_rejected(coords, message):
    coords = np.asarray(coords, np.int32)
    with pytest.raises(ValueError, match=message):
        SparseTensor.from_packed(coords, np.zeros((len(coords), 1)), capacity=4)


def test_compact_moves_valid_rows_to_front_and_reports_overflow():
    coords = jnp.arange(18, dtype=jnp.int32).reshape(6, 3)
    feats = jnp.arange(6, dtype=jnp.float32)[:, None] + 1
    mask = jnp.array([False, True, False, True, True, False])
    c, f, m, over = compact(coords, feats, mask, capacity=4)
    np.testing.assert_array_equal(np.asarray(m), [True, True, True, False])
    np.testing.assert_array_equal(np.asarray(f[:, 0]), [2, 4, 5, 0])
    np.testing.assert_array_equal(np.asarray(c[3]), [0, 0, 0])
    assert not bool(over)
    *_, over = jax.vmap(lambda c, f, m: compact(c, f, m, capacity=2))(coords[None], feats[None], mask[None])
    with pytest.raises(CapacityError, match=r"samples \[0\]"):
        check_overflow(over, "downsampled set")
    *_, grown = compact(coords, feats, mask, capacity=9)
    assert not bool(grown)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    coords, feats = ref.random_packed(rng, [5, 0, 8, 3, 1, 7, 2, 6], channels=4, resolution=32)
    return SparseTensor.from_packed(coords, feats, capacity=8, resolution=32)


def test_pytree_under_jit_vmap_grad(batch):
    leaves, treedef = jax.tree.flatten(batch)
    assert len(leaves) == 3 and jax.tree.unflatten(treedef, leaves).resolution == 32

    @jax.jit
    def double(st: SparseTensor) -> SparseTensor:
        return st.replace_feats(2 * st.feats + 1)  # +1 would leak into padding without the mask

    out = double(batch)
    assert isinstance(out, SparseTensor) and out.resolution == 32
    np.testing.assert_allclose(out.to_packed()[1], 2 * batch.to_packed()[1] + 1)
    assert not np.asarray(out.feats)[~np.asarray(batch.mask)].any()

    per_sample = jax.vmap(lambda c, f, m: jnp.sum(masked(f[None], m[None])))(batch.coords, batch.feats, batch.mask)
    np.testing.assert_allclose(per_sample, [f.sum() for f in batch.to_samples()[1]], atol=1e-5)

    grad = jax.grad(lambda st: jnp.sum(jnp.square(double(st).feats)), allow_int=True)(batch)
    np.testing.assert_allclose(grad.feats, np.where(batch.mask[..., None], 4 * (2 * batch.feats + 1), 0), rtol=1e-5)


@jax.jit
def _pipeline_loss_and_grads(st, kernel):
    """Every sparse op once: conv, group norm, shifted-window and full attention, down/upsample."""
    def loss(feats, kernel):
        x = st.replace(feats=feats)
        h = submanifold_conv3d(x.feats, neighbor_map(x.coords, x.mask), kernel, None, x.mask)
        h = group_norm(h, x.mask, 2)
        B, L, C = h.shape
        t = h.reshape(B, L, 2, C // 2)
        h = h + sparse_self_attention(t, t, t, swin_layout(x.coords, x.mask, 8, 1), block_size=4).reshape(B, L, C)
        t = h.reshape(B, L, 2, C // 2)
        h = h + sparse_self_attention(t, t, t, full_layout(x.mask), block_size=4).reshape(B, L, C)
        coarse, parent = downsample(x.replace(feats=h))
        return jnp.sum(upsample(coarse.feats, parent, x).feats ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))(st.feats, kernel)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_named_sharding_over_batch(batch, axis_type):
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("batch")))
    assert sharded.feats.sharding.spec == P("batch") and sharded.mask.sharding.spec == P("batch")
    kernel = jnp.asarray(np.random.default_rng(0).standard_normal((27, 4, 4)) / 10, jnp.float32)
    with jax.set_mesh(mesh):  # explicit sharding needs the mesh in context; harmless for Auto
        out = jax.jit(lambda st: st.replace_feats(jnp.tanh(st.feats)))(sharded)
        loss, (g_feats, g_kernel) = _pipeline_loss_and_grads(sharded, kernel)
    assert out.feats.sharding.spec[0] == "batch" and g_feats.sharding.spec[0] == "batch"
    np.testing.assert_allclose(out.to_packed()[1], np.tanh(batch.to_packed()[1]), rtol=1e-6)
    np.testing.assert_array_equal(out.to_packed()[0], batch.to_packed()[0])
    want_loss, (want_feats, want_kernel) = _pipeline_loss_and_grads(batch, kernel)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_feats), np.asarray(want_feats), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_kernel), np.asarray(want_kernel), rtol=1e-4, atol=1e-5)


def test_uint8_coords_and_bf16_feats_round_trip():
    """Latent files store coords uint8 [L, 3]; features may be bf16."""
    rng = np.random.default_rng(4)
    coords = rng.choice(64**3, 20, replace=False)
    coords = np.stack(np.unravel_index(coords, (64,) * 3), -1).astype(np.uint8)
    feats = jnp.asarray(rng.standard_normal((20, 8)), jnp.bfloat16)
    st = SparseTensor.from_samples([coords], [np.asarray(feats)], capacity=32)
    assert st.coords.dtype == jnp.int32 and st.feats.dtype == jnp.bfloat16
    packed_coords, packed_feats = st.to_packed()
    np.testing.assert_array_equal(packed_coords[:, 1:], coords)
    np.testing.assert_array_equal(packed_feats.view(np.uint16), np.asarray(feats).view(np.uint16))
    packed = np.concatenate([np.zeros((20, 1), np.uint8), coords], 1)  # uint8 packed: no key overflow
    SparseTensor.from_packed(packed, np.asarray(feats), capacity=20)
