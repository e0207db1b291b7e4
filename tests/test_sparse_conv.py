"""Neighbour map and submanifold convolution vs dict-lookup brute force, the released weight
layout, dense-conv equivalence (spconv's own check), and padding invariance of values and grads."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import sparse_reference as ref
from trellis_jax.sparse import (
    SparseTensor,
    kernel_from_torch,
    kernel_offsets,
    kernel_to_torch,
    neighbor_map,
    submanifold_conv3d,
)
from trellis_jax.sparse.conv import gather_rows

CIN, COUT = 8, 6


@functools.partial(jax.jit, static_argnums=4)
def conv(feats, coords, mask, kernel_and_bias, kernel_size):
    nbr = neighbor_map(coords, mask, kernel_size)
    return submanifold_conv3d(feats, nbr, *kernel_and_bias, mask=mask)


@functools.partial(jax.jit, static_argnums=4)
def conv_grads(feats, coords, mask, kernel_and_bias, kernel_size, cotangent):
    def loss(f, kb):
        return jnp.sum(conv(f, coords, mask, kb, kernel_size) * cotangent)

    return jax.grad(loss, argnums=(0, 1))(feats, kernel_and_bias)


def _layouts():
    rng = np.random.default_rng(11)
    return {
        "scattered": ref.random_packed(rng, [40, 0, 17], CIN, resolution=8),
        "clustered": ref.clustered_packed(rng, [48, 30, 1], CIN, resolution=64, cube=4),
        "border": (np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 63, 63, 63], [0, 62, 63, 63],
                             [1, 0, 0, 1], [1, 0, 0, 0]], np.int32),
                   rng.standard_normal((7, CIN)).astype(np.float32)),
    }


LAYOUTS = _layouts()


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(5)
    return {k: ((rng.standard_normal((COUT, k, k, k, CIN)) / np.sqrt(k**3 * CIN)).astype(np.float32),
                rng.standard_normal(COUT).astype(np.float32)) for k in (1, 3)}


def test_kernel_offsets_follow_released_weight_order():
    off = kernel_offsets(3)
    assert off.shape == (27, 3)
    for r0 in range(3):
        for r1 in range(3):
            for r2 in range(3):
                np.testing.assert_array_equal(off[9 * r0 + 3 * r1 + r2], [r0 - 1, r1 - 1, r2 - 1])
    np.testing.assert_array_equal(kernel_offsets(1), [[0, 0, 0]])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_neighbor_map_matches_dict_lookup(name):
    coords, feats = LAYOUTS[name]
    st = SparseTensor.from_packed(coords, feats, capacity=48)
    nbr = np.asarray(jax.jit(neighbor_map, static_argnums=2)(st.coords, st.mask, 3))
    mask = np.asarray(st.mask)
    for b in range(st.batch_size):
        rows = {tuple(c): i for i, c in enumerate(np.asarray(st.coords[b])[mask[b]].tolist())}
        for i in range(st.capacity):
            for k, o in enumerate(kernel_offsets(3)):
                want = rows.get(tuple((np.asarray(st.coords[b, i]) + o).tolist()), -1) if mask[b, i] else -1
                assert nbr[b, i, k] == want, (b, i, k)


@pytest.mark.parametrize("kernel_size", [3, 1])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_conv_matches_brute_force(name, kernel_size, weights):
    coords, feats = LAYOUTS[name]
    weight, bias = weights[kernel_size]
    st = SparseTensor.from_packed(coords, feats, capacity=48)
    out = conv(st.feats, st.coords, st.mask, (kernel_from_torch(weight), jnp.asarray(bias)), kernel_size)
    got = SparseTensor(st.coords, out, st.mask).to_packed()[1]
    np.testing.assert_allclose(got, ref.submanifold_conv(coords, feats, weight, bias), atol=1e-4, rtol=1e-4)
    assert not np.asarray(out)[~np.asarray(st.mask)].any()


def test_conv_equals_dense_conv_at_active_sites(weights):
    """spconv's equivalence check: a dense conv with the permuted weight, padding 1."""
    rng = np.random.default_rng(2)
    R = 10
    coords, feats = ref.random_packed(rng, [300], CIN, resolution=R)
    weight, bias = weights[3]
    st = SparseTensor.from_packed(coords, feats, capacity=320, resolution=R)
    out = jax.jit(lambda f, c, m: submanifold_conv3d(f, neighbor_map(c, m, 3), kernel_from_torch(weight), bias, m))(
        st.feats, st.coords, st.mask)
    grid = np.zeros((1, R, R, R, CIN), np.float32)
    grid[0, coords[:, 1], coords[:, 2], coords[:, 3]] = feats
    dense = jax.lax.conv_general_dilated(
        jnp.asarray(grid), jnp.asarray(weight.transpose(1, 2, 3, 4, 0)), (1, 1, 1), [(1, 1)] * 3,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=jax.lax.Precision.HIGHEST) + bias
    np.testing.assert_allclose(np.asarray(out[0, :300]), np.asarray(dense)[0, coords[:, 1], coords[:, 2], coords[:, 3]],
                               atol=1e-4, rtol=1e-4)


def test_kernel_layout_round_trip(weights):
    for k, (weight, _) in weights.items():
        kernel = kernel_from_torch(weight)
        assert kernel.shape == (k**3, CIN, COUT)
        for r in np.ndindex(k, k, k):  # offset index k²·r0 + k·r1 + r2 holds W[:, r0, r1, r2, :]ᵀ
            offset = k * k * r[0] + k * r[1] + r[2]
            np.testing.assert_array_equal(np.asarray(kernel[offset]), weight[:, r[0], r[1], r[2], :].T)
        np.testing.assert_array_equal(np.asarray(kernel_to_torch(kernel, k)), weight)


def test_conv_rejects_mismatched_kernel(weights):
    nbr = jnp.zeros((1, 4, 27), jnp.int32)
    with pytest.raises(ValueError, match="27 offsets, kernel has 1"):
        submanifold_conv3d(jnp.zeros((1, 4, CIN)), nbr, kernel_from_torch(weights[1][0]))


def test_padding_changes_nothing_and_gets_no_gradient(weights):
    coords, feats = LAYOUTS["scattered"]
    weight, bias = weights[3]
    kb = (kernel_from_torch(weight), jnp.asarray(bias))
    rng = np.random.default_rng(0)
    results = []
    for capacity in (48, 64):
        st = SparseTensor.from_packed(coords, feats, capacity=capacity)
        pad = ~np.asarray(st.mask)
        garbage = np.where(pad[..., None], np.nan, np.asarray(st.feats))  # padding must never be read
        # the same cotangent on the valid rows at both capacities, garbage on padding rows
        cot = rng.standard_normal(st.feats.shape[:2] + (COUT,)).astype(np.float32)
        cot[~pad] = np.random.default_rng(1).standard_normal((len(coords), COUT))
        out = conv(jnp.asarray(garbage), st.coords, st.mask, kb, 3)
        g_feats, g_kb = conv_grads(jnp.asarray(garbage), st.coords, st.mask, kb, 3, jnp.asarray(cot))
        assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(g_feats)).all()
        assert all(np.isfinite(np.asarray(g)).all() for g in g_kb)
        assert not np.asarray(g_feats)[pad].any()
        results.append((SparseTensor(st.coords, out, st.mask).to_packed()[1],
                        SparseTensor(st.coords, g_feats, st.mask).to_packed()[1], g_kb))
    (o1, g1, kb1), (o2, g2, kb2) = results
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6)
    for a, b in zip(kb1, kb2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o1, ref.submanifold_conv(coords, feats, weight, bias), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 2])
def test_custom_gradient_equals_autodiff_of_plain_gather_conv(weights, kernel_size):
    """The gather-only backward (flipped kernel on the symmetric map) equals autodiff of the
    straightforward gather-and-sum form, for feats, kernel and bias (even kernels: autodiff)."""
    coords, feats = LAYOUTS["clustered"]
    rng = np.random.default_rng(kernel_size)
    weight = weights[3][0] if kernel_size == 3 else rng.standard_normal((COUT, 2, 2, 2, CIN)).astype(np.float32)
    bias = weights[3][1]
    st = SparseTensor.from_packed(coords, feats, capacity=48)
    nbr = neighbor_map(st.coords, st.mask, kernel_size)
    cot = jnp.asarray(np.random.default_rng(8).standard_normal(st.feats.shape[:2] + (COUT,)), jnp.float32)

    def plain(f, kern, b):
        out = sum(jnp.einsum("blc,cd->bld", gather_rows(f, nbr[..., k]), kern[k]) for k in range(kernel_size**3)) + b
        return jnp.sum(jnp.where(st.mask[..., None], out, 0) * cot)

    def ours(f, kern, b):
        return jnp.sum(submanifold_conv3d(f, nbr, kern, b, st.mask) * cot)

    args = (st.feats, kernel_from_torch(weight), jnp.asarray(bias))
    want = jax.jit(jax.grad(plain, argnums=(0, 1, 2)))(*args)
    got = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    out = submanifold_conv3d(st.feats, nbr, kernel_from_torch(weight), jnp.asarray(bias), st.mask)
    np.testing.assert_allclose(SparseTensor(st.coords, out, st.mask).to_packed()[1],
                               ref.submanifold_conv(coords, feats, weight, bias), atol=1e-4, rtol=1e-4)


def test_bf16_features_accumulate_in_f32(weights):
    coords, feats = LAYOUTS["clustered"]
    weight, bias = weights[3]
    st = SparseTensor.from_packed(coords, feats, capacity=48)
    out = conv(st.feats.astype(jnp.bfloat16), st.coords, st.mask, (kernel_from_torch(weight), jnp.asarray(bias)), 3)
    assert out.dtype == jnp.bfloat16
    want = ref.submanifold_conv(coords, np.asarray(jnp.asarray(feats, jnp.bfloat16), np.float32),
                                np.asarray(jnp.asarray(weight, jnp.bfloat16), np.float32), bias)
    got = SparseTensor(st.coords, out.astype(jnp.float32), st.mask).to_packed()[1]
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)


def test_sharded_over_batch_equals_unsharded(weights):
    """Neighbour map + conv jitted on a batch sharded over the 8 CPU devices."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    rng = np.random.default_rng(12)
    coords, feats = ref.random_packed(rng, [30, 0, 12, 48, 5, 1, 20, 33], CIN, resolution=8)
    st = SparseTensor.from_packed(coords, feats, capacity=48)
    kb = (kernel_from_torch(weights[3][0]), jnp.asarray(weights[3][1]))
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(st, NamedSharding(mesh, P("batch")))
    out = conv(sharded.feats, sharded.coords, sharded.mask, kb, 3)
    assert out.sharding.spec[0] == "batch"
    np.testing.assert_allclose(SparseTensor(st.coords, out, st.mask).to_packed()[1],
                               ref.submanifold_conv(coords, feats, *weights[3]), atol=1e-4, rtol=1e-4)
