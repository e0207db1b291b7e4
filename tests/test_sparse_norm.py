"""LayerNorm (f32 inside), per-sample GroupNorm over valid voxels only, and the 3D sinusoidal
absolute position embedding with hand-computed values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import sparse_reference as ref
from trellis_jax.sparse import SparseTensor, absolute_position_embedding, group_norm, layer_norm

C, GROUPS = 16, 4


def _np_layer_norm(x, eps):
    x = x.astype(np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_layer_norm_matches_numpy_and_computes_in_f32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, C)).astype(np.float32) * 3 + 1
    scale, bias = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    np.testing.assert_allclose(layer_norm(jnp.asarray(x), 1e-6), _np_layer_norm(x, 1e-6), atol=1e-5)
    np.testing.assert_allclose(layer_norm(jnp.asarray(x), 1e-5, scale, bias),
                               _np_layer_norm(x, 1e-5) * scale + bias, atol=1e-5)
    # bf16 in, bf16 out; statistics in f32 (a large offset would wreck bf16 statistics)
    xb = jnp.asarray(x + 100.0, jnp.bfloat16)
    yb = layer_norm(xb, 1e-6)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), _np_layer_norm(np.asarray(xb, np.float32), 1e-6), atol=0.02)


@pytest.fixture(scope="module")
def gn():
    return jax.jit(lambda f, m, s, b: group_norm(f, m, GROUPS, 1e-5, s, b))


def _np_group_norm(feats, scale, bias, eps=1e-5):
    """torch GroupNorm on one sample: [n, C] viewed as [1, C, n]."""
    n = len(feats)
    x = feats.astype(np.float64).reshape(n, GROUPS, C // GROUPS)
    mean = x.mean(axis=(0, 2), keepdims=True)
    var = x.var(axis=(0, 2), keepdims=True)
    return ((x - mean) / np.sqrt(var + eps)).reshape(n, C) * scale + bias


def test_group_norm_per_sample_over_valid_voxels_only(gn):
    rng = np.random.default_rng(1)
    coords, feats = ref.random_packed(rng, [9, 0, 30, 1], C, resolution=8)
    feats = feats * np.arange(1, C + 1) + 5.0  # very different statistics per group
    scale, bias = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    outs = []
    for capacity in (30, 44):
        st = SparseTensor.from_packed(coords, feats, capacity=capacity)
        pad = ~np.asarray(st.mask)
        garbage = jnp.asarray(np.where(pad[..., None], np.nan, np.asarray(st.feats)))  # never read
        out = np.asarray(gn(garbage, st.mask, scale, bias))
        assert np.isfinite(out).all() and not out[pad].any()
        outs.append(SparseTensor(st.coords, jnp.asarray(out), st.mask).to_packed()[1])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    want = np.concatenate([_np_group_norm(feats[coords[:, 0] == b], scale, bias) for b in (0, 2, 3)])  # 1 is empty
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)


def test_group_norm_gradient_ignores_padding(gn):
    rng = np.random.default_rng(2)
    coords, feats = ref.random_packed(rng, [7, 12], C, resolution=8)
    scale, bias = jnp.ones(C), jnp.zeros(C)
    grads = []
    for capacity in (30, 44):
        st = SparseTensor.from_packed(coords, feats, capacity=capacity)
        pad = ~np.asarray(st.mask)
        cot = np.zeros(st.feats.shape, np.float32)
        cot[~pad] = np.random.default_rng(3).standard_normal((len(coords), C))
        garbage = jnp.asarray(np.where(pad[..., None], 1e4, np.asarray(st.feats)))
        g = np.asarray(jax.grad(lambda f: jnp.sum(gn(f, st.mask, scale, bias) * cot))(garbage))
        assert np.isfinite(g).all() and not g[pad].any()
        grads.append(g[~pad])
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible into 32 groups"):
        group_norm(jnp.zeros((1, 2, 48)), jnp.ones((1, 2), bool), 32)


@pytest.mark.parametrize("channels, freqs, zeros", [(768, 128, 0), (1024, 170, 4), (1280, 213, 2)])
def test_absolute_position_embedding_hand_values(channels, freqs, zeros):
    coords = np.array([[0, 0, 0], [1, 2, 3], [63, 31, 7]], np.int32)
    emb = np.asarray(absolute_position_embedding(jnp.asarray(coords), channels))
    assert emb.shape == (3, channels)
    assert 6 * freqs + zeros == channels
    if zeros:
        assert not emb[:, -zeros:].any()
    # origin: sin 0 = 0, cos 0 = 1 in each axis block
    np.testing.assert_array_equal(emb[0, : 6 * freqs], np.tile(np.r_[np.zeros(freqs), np.ones(freqs)], 3))
    for (x, y, z), row in zip(coords[1:], emb[1:]):
        for axis, c in enumerate((x, y, z)):
            block = row[axis * 2 * freqs : (axis + 1) * 2 * freqs]
            for k in (0, 1, freqs // 2, freqs - 1):
                w = 10000.0 ** (-k / freqs)
                assert block[k] == pytest.approx(math.sin(c * w), abs=2e-5), (axis, k)
                assert block[freqs + k] == pytest.approx(math.cos(c * w), abs=2e-5), (axis, k)
    # first value of each axis block is sin(c): x = 1 -> sin 1, y = 2 -> sin 2, z = 3 -> sin 3
    np.testing.assert_allclose(emb[1, [0, 2 * freqs, 4 * freqs]], [0.8414709848, 0.9092974268, 0.1411200081], atol=1e-6)


def test_absolute_position_embedding_batched_and_dtype():
    coords = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 5, 3)), jnp.int32)
    emb = absolute_position_embedding(coords, 64, dtype=jnp.bfloat16)
    assert emb.shape == (2, 5, 64) and emb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(emb[1, 2], np.float32),
                               np.asarray(absolute_position_embedding(coords[1, 2], 64)), atol=1e-2)
