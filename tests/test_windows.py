"""3D (shifted) window formation: `window_layout` groups tokens exactly as the reference's
partition (docs/reference_facts.md#swin-windows, computed on the packed batch including the batch term)."""
import jax
import numpy as np
import pytest

from tests import sparse_reference as ref
from trellis_jax.sparse import SparseTensor, full_layout, swin_layout, window_layout

layout_fn = jax.jit(window_layout, static_argnums=(2, 3))


def _groups_of_valid_rows(layout, st):
    """Per packed row (sample-major, prefix order): the layout's (sample, segment id)."""
    seg_by_row = np.take_along_axis(np.asarray(layout.segment_ids), np.asarray(layout.inv_perm), axis=1)
    b_idx, row_idx = np.nonzero(np.asarray(st.mask))
    return list(zip(b_idx.tolist(), seg_by_row[b_idx, row_idx].tolist()))


def _assert_same_partition(ours, theirs):
    """Two labelings of the same rows define the same partition (a bijection between labels)."""
    pairs = set(zip(ours, theirs))
    assert len(pairs) == len(set(ours)) == len(set(theirs))


def _check_layout_structure(layout, st, window):
    B, L = st.mask.shape
    perm, inv = np.asarray(layout.perm), np.asarray(layout.inv_perm)
    seg = np.asarray(layout.segment_ids)
    for b in range(B):
        np.testing.assert_array_equal(np.sort(perm[b]), np.arange(L))
        np.testing.assert_array_equal(perm[b][inv[b]], np.arange(L))
        n = int(st.counts()[b])
        assert (seg[b, n:] == -1).all() and (seg[b, :n] >= 0).all()  # padding sorted last
        valid = seg[b, :n]
        starts = np.r_[n > 0, valid[1:] != valid[:-1]]
        assert len(np.unique(valid)) == starts.sum()  # every group is one contiguous run
        assert np.bincount(np.unique(valid, return_inverse=True)[1]).max(initial=0) <= window**3
    assert layout.max_group == window**3


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("counts", [[60, 0, 37], [5, 64, 64, 1]])
def test_window_partition_matches_reference(counts, shift):
    rng = np.random.default_rng(len(counts) + shift)
    coords, feats = ref.clustered_packed(rng, counts, 1, resolution=64, cube=14)
    st = SparseTensor.from_packed(coords, feats, capacity=64)
    layout = layout_fn(st.coords, st.mask, 8, shift)
    _check_layout_structure(layout, st, 8)
    _assert_same_partition(_groups_of_valid_rows(layout, st), ref.window_keys(coords, 8, shift).tolist())


def test_hand_made_windows_with_border_shift():
    """Coords 60..63 shifted by 4 reach 67: window 8 of 9 per axis; 0..3 stay in window 0."""
    coords = np.array([[0, 0, 0], [3, 3, 3], [4, 4, 4], [59, 59, 59], [60, 60, 60], [63, 63, 63], [63, 0, 60]])
    st = SparseTensor.from_samples([coords], [np.zeros((7, 1))], capacity=8)
    expected = {  # shift -> groups of row indices
        0: [{0, 1, 2}, {3, 4, 5}, {6}],
        4: [{0, 1}, {2}, {3}, {4, 5}, {6}],
    }
    for shift, groups in expected.items():
        layout = layout_fn(st.coords, st.mask, 8, shift)
        labels = [s for _, s in _groups_of_valid_rows(layout, st)]
        got = {}
        for row, label in enumerate(labels):
            got.setdefault(label, set()).add(row)
        assert sorted(map(sorted, got.values())) == sorted(map(sorted, groups)), shift
    packed = np.concatenate([np.zeros((7, 1), int), coords], 1)
    keys = ref.window_keys(packed, 8, 4)
    assert keys[5] == 8 * 81 + 8 * 9 + 8  # nw = ceil((67 + 1) / 8) = 9 per axis


def test_windows_never_cross_samples():
    """Two samples with identical voxels: every group holds rows of one sample only."""
    coords = np.array([[1, 1, 1], [2, 2, 2], [9, 1, 1]])
    st = SparseTensor.from_samples([coords, coords], [np.zeros((3, 1))] * 2, capacity=4)
    layout = layout_fn(st.coords, st.mask, 8, 0)
    packed, _ = st.to_packed()
    _assert_same_partition(_groups_of_valid_rows(layout, st), ref.window_keys(packed, 8, 0).tolist())
    assert len(set(_groups_of_valid_rows(layout, st))) == 4


def test_swin_layout_alternates_shift():
    rng = np.random.default_rng(0)
    coords, feats = ref.clustered_packed(rng, [50], 1, resolution=64, cube=12)
    st = SparseTensor.from_packed(coords, feats, capacity=64)
    for block in range(3):
        layout = swin_layout(st.coords, st.mask, 8, block)
        shift = 4 * (block % 2)
        _assert_same_partition(_groups_of_valid_rows(layout, st), ref.window_keys(coords, 8, shift).tolist())


def test_full_layout_is_one_group_per_sample():
    mask = np.array([[True, True, False], [False, False, False]])
    layout = full_layout(mask)
    np.testing.assert_array_equal(np.asarray(layout.segment_ids), [[0, 0, -1], [-1, -1, -1]])
    assert layout.kind == "full" and layout.max_group == 3
