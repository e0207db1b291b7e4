"""downsample / upsample / subdivide vs a loop reference on the packed layout, plus padding
invariance of values and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import sparse_reference as ref
from trellis_jax.sparse import (
    CapacityError,
    SparseTensor,
    check_overflow,
    downsample,
    downsample_overflow,
    subdivide,
    upsample,
)

CAP = 40


@functools.partial(jax.jit, static_argnames="reference_mean")
def down(st, reference_mean=True):
    return downsample(st, 2, reference_mean=reference_mean)


@jax.jit
def down_up(st):
    coarse, parent = downsample(st)
    return upsample(coarse.feats * 3.0, parent, st)


def _packed(counts, seed, resolution=6):
    return ref.random_packed(np.random.default_rng(seed), counts, channels=3, resolution=resolution)


@pytest.mark.parametrize("reference_mean", [True, False])
@pytest.mark.parametrize("counts", [[40, 0, 13], [1, 25]])
def test_downsample_matches_reference(counts, reference_mean):
    coords, feats = _packed(counts, seed=len(counts))
    st = SparseTensor.from_packed(coords, feats, capacity=CAP, resolution=6)
    coarse, parent = down(st, reference_mean=reference_mean)
    assert coarse.resolution == 3 and coarse.capacity == CAP and parent.shape == (len(counts), CAP)
    want_coords, want_feats, want_idx = ref.downsample(coords, feats, include_zero=reference_mean)
    got_coords, got_feats = coarse.to_packed()
    np.testing.assert_array_equal(got_coords, want_coords)  # sorted by (b, x, y, z)
    np.testing.assert_allclose(got_feats, want_feats, rtol=1e-5, atol=1e-6)
    # parent map: fine row -> coarse row of the same sample (reference idx is global, ours per sample)
    starts = np.concatenate([[0], np.cumsum(np.bincount(want_coords[:, 0], minlength=len(counts)))])
    mask = np.asarray(st.mask)
    got_idx = np.asarray(parent)[mask] + starts[coords[:, 0]]
    np.testing.assert_array_equal(got_idx, want_idx)
    assert (np.asarray(parent)[~mask] == CAP).all()
    assert not np.asarray(coarse.feats)[~np.asarray(coarse.mask)].any()
    assert not np.asarray(coarse.coords)[~np.asarray(coarse.mask)].any()


def test_reference_mean_counts_the_zero_it_starts_from():
    """A parent with children 2 and 4 gets (2 + 4) / 3 in the reference (torch include_self)."""
    coords, feats = [[[0, 0, 0], [1, 1, 1], [2, 0, 0]]], [[[2.0], [4.0], [6.0]]]
    st = SparseTensor.from_samples(coords, feats, capacity=4, resolution=4)
    np.testing.assert_allclose(down(st)[0].to_packed()[1][:, 0], [2.0, 3.0])
    np.testing.assert_allclose(down(st, reference_mean=False)[0].to_packed()[1][:, 0], [3.0, 6.0])


def test_upsample_copies_parent_back_in_original_order():
    coords, feats = _packed([40, 0, 13], seed=9)
    st = SparseTensor.from_packed(coords, feats, capacity=CAP, resolution=6)
    out = down_up(st)
    assert out.resolution == 6
    want_coords, want_feats, want_idx = ref.downsample(coords, feats)
    got_coords, got_feats = out.to_packed()
    np.testing.assert_array_equal(got_coords, coords)  # the original fine voxels, original order
    np.testing.assert_allclose(got_feats, 3.0 * want_feats[want_idx], rtol=1e-5, atol=1e-6)
    assert not np.asarray(out.feats)[~np.asarray(st.mask)].any()


def test_subdivide_children_order_and_layout():
    coords, feats = _packed([3, 0, 2], seed=4, resolution=8)
    st = SparseTensor.from_packed(coords, feats, capacity=4, resolution=8)
    fine = jax.jit(subdivide)(st)
    assert fine.resolution == 16 and fine.capacity == 32
    got_coords, got_feats = fine.to_packed()
    children = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    assert children[:3] == [(0, 0, 0), (0, 0, 1), (0, 1, 0)] and children[-1] == (1, 1, 1)
    want_coords = np.array([[c[0], *(2 * c[1:] + np.array(o))] for c in coords for o in children])
    np.testing.assert_array_equal(got_coords, want_coords)  # children of a parent consecutive
    np.testing.assert_array_equal(got_feats, np.repeat(feats, 8, axis=0))
    np.testing.assert_array_equal(np.asarray(fine.counts()), [24, 0, 16])
    assert not np.asarray(fine.coords)[~np.asarray(fine.mask)].any()


def test_padding_changes_nothing_and_gets_no_gradient():
    coords, feats = _packed([40, 0, 13], seed=7)

    def loss(f, st, cot):
        up = down_up(st.replace(feats=f))
        return jnp.sum(up.feats * cot) + jnp.sum(down(st.replace(feats=f))[0].feats ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss))
    results = []
    for capacity in (40, 56):
        st = SparseTensor.from_packed(coords, feats, capacity=capacity, resolution=6)
        pad = ~np.asarray(st.mask)
        garbage = jnp.asarray(np.where(pad[..., None], np.nan, np.asarray(st.feats)))
        cot = np.zeros(st.feats.shape, np.float32)
        cot[~pad] = np.random.default_rng(1).standard_normal((len(coords), 3))
        val, grad = grad_fn(garbage, st, jnp.asarray(cot))
        out = down_up(st.replace(feats=garbage))
        assert np.isfinite(float(val)) and np.isfinite(np.asarray(grad)).all()
        assert np.isfinite(np.asarray(out.feats)).all()
        assert not np.asarray(grad)[pad].any()
        results.append((float(val), np.asarray(grad)[~pad], out.to_packed()[1]))
    (v1, g1, o1), (v2, g2, o2) = results
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(o1, o2, rtol=1e-6)


def test_coarse_capacity_and_overflow():
    coords, feats = _packed([40, 0, 13], seed=5)
    st = SparseTensor.from_packed(coords, feats, capacity=CAP, resolution=6)
    full, full_parent = down(st)
    counts = np.asarray(full.counts())
    fits = int(counts.max())

    @functools.partial(jax.jit, static_argnums=1)
    def down_to(st, capacity):
        coarse, parent = downsample(st, capacity=capacity)
        return coarse, parent, downsample_overflow(parent, st.mask, capacity), upsample(coarse.feats, parent, st)

    for capacity in (fits, CAP + 8):
        coarse, parent, over, up = down_to(st, capacity)
        assert coarse.capacity == capacity and not np.asarray(over).any()
        for a, b in zip(coarse.to_packed(), full.to_packed()):
            np.testing.assert_array_equal(a, b)
        valid = np.asarray(st.mask)
        np.testing.assert_array_equal(np.asarray(parent)[valid], np.asarray(full_parent)[valid])
        assert (np.asarray(parent)[~np.asarray(st.mask)] == capacity).all()
        np.testing.assert_allclose(up.to_packed()[1], down_up(st).to_packed()[1] / 3.0, rtol=1e-6)
    _, _, over, _ = down_to(st, fits - 1)
    np.testing.assert_array_equal(np.asarray(over), counts > fits - 1)
    with pytest.raises(CapacityError, match=r"samples \[0\]"):
        check_overflow(over, "coarse level")
