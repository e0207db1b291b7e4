"""Full (per sample), 3D (shifted) window and cross attention vs a numpy brute force on the packed
layout; padding invariance of values and gradients (non-finite padding included)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import sparse_reference as ref
from trellis_jax.sparse import (
    SparseTensor,
    cross_attention,
    dense_attention,
    full_layout,
    sparse_self_attention,
    window_layout,
)
from trellis_jax.sparse.attention import query_chunked_attention

H, D = 2, 8
COUNTS = [45, 0, 30, 1]


@functools.partial(jax.jit, static_argnames=("kind", "window", "shift", "block_size"))
def attend(q, k, v, coords, mask, kind, window=8, shift=0, block_size=256):
    layout = full_layout(mask) if kind == "full" else window_layout(coords, mask, window, shift)
    return sparse_self_attention(q, k, v, layout, block_size=block_size)


def _qkv_packed(seed, counts=COUNTS, cube=12):
    rng = np.random.default_rng(seed)
    coords, qkv = ref.clustered_packed(rng, counts, 3 * H * D, resolution=64, cube=cube)
    return coords, qkv.reshape(-1, 3, H, D) * 2.0


def _pad(coords, x, capacity, fill=0.0):
    """Packed [N, ...] -> padded [B, L, ...] with `fill` in the padding rows."""
    st = SparseTensor.from_packed(coords, np.zeros((len(coords), 1), np.float32), capacity=capacity,
                                  batch_size=len(COUNTS))
    out = np.full(st.mask.shape + x.shape[1:], fill, np.float32)
    out[np.asarray(st.mask)] = x
    return st, out


def _reference(coords, qkv, kind, window=8, shift=0):
    groups = coords[:, 0] if kind == "full" else ref.window_keys(coords, window, shift)
    return ref.group_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], groups)


CASES = [  # (kind, window, shift, block_size): block sizes below the group size exercise the blocking
    ("full", 8, 0, 256),
    ("full", 8, 0, 20),  # query-chunked, last chunk partly padding
    ("window", 8, 0, 256),
    ("window", 8, 4, 256),
    ("window", 3, 0, 7),
    ("window", 3, 1, 8),
    ("window", 2, 1, 4),
]


@pytest.mark.parametrize("kind, window, shift, block_size", CASES)
def test_self_attention_matches_brute_force(kind, window, shift, block_size):
    coords, qkv = _qkv_packed(seed=window + shift)
    st, x = _pad(coords, qkv, capacity=48)
    out = attend(*(jnp.asarray(x[:, :, i]) for i in range(3)), st.coords, st.mask, kind, window, shift, block_size)
    got = np.asarray(out)[np.asarray(st.mask)]
    np.testing.assert_allclose(got, _reference(coords, qkv, kind, window, shift), atol=2e-5, rtol=1e-4)
    assert not np.asarray(out)[~np.asarray(st.mask)].any()


def test_identical_samples_do_not_attend_across_the_batch():
    coords = np.array([[1, 1, 1], [2, 2, 2], [9, 1, 1]])
    packed = np.concatenate([np.repeat([[0], [1]], 3, axis=0), np.tile(coords, (2, 1))], 1)
    qkv = np.random.default_rng(0).standard_normal((6, 3, H, D)).astype(np.float32)
    st = SparseTensor.from_packed(packed, np.zeros((6, 1)), capacity=4)
    x = np.zeros((2, 4, 3, H, D), np.float32)
    x[np.asarray(st.mask)] = qkv
    for kind in ("full", "window"):
        out = attend(*(jnp.asarray(x[:, :, i]) for i in range(3)), st.coords, st.mask, kind)
        np.testing.assert_allclose(np.asarray(out)[np.asarray(st.mask)], _reference(packed, qkv, kind), atol=2e-5)


@pytest.mark.parametrize("kind, window, shift, block_size", [CASES[1], CASES[3], CASES[5]])
def test_padding_changes_nothing_and_gets_no_gradient(kind, window, shift, block_size):
    coords, qkv = _qkv_packed(seed=3)
    cot_packed = np.random.default_rng(4).standard_normal((len(coords), H, D)).astype(np.float32)

    def loss(q, k, v, coords_, mask, cot):
        return jnp.sum(attend(q, k, v, coords_, mask, kind, window, shift, block_size) * cot)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    results = []
    for capacity in (48, 64):
        st, x = _pad(coords, qkv, capacity, fill=np.nan)  # padding must never be read
        _, cot = _pad(coords, cot_packed, capacity)
        q, k, v = (jnp.asarray(x[:, :, i]) for i in range(3))
        out = np.asarray(attend(q, k, v, st.coords, st.mask, kind, window, shift, block_size))
        grads = [np.asarray(g) for g in grad_fn(q, k, v, st.coords, st.mask, jnp.asarray(cot))]
        mask = np.asarray(st.mask)
        assert np.isfinite(out).all() and not out[~mask].any()
        for g in grads:
            assert np.isfinite(g).all() and not g[~mask].any()
        results.append((out[mask], [g[mask] for g in grads]))
    (o1, g1), (o2, g2) = results
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o1, _reference(coords, qkv, kind, window, shift), atol=2e-5, rtol=1e-4)


def test_cross_attention_per_sample():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((3, 10, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((3, 7, H, D)).astype(np.float32) for _ in range(2))
    for chunk in (1024, 4):  # one piece; chunks of 4 queries (last chunk partly padding)
        out = np.asarray(jax.jit(cross_attention, static_argnums=3)(q, k, v, chunk))
        for b in range(3):
            np.testing.assert_allclose(out[b], ref.attention(q[b], k[b], v[b]), atol=2e-5, rtol=1e-4)
    grads = jax.grad(lambda q, k, v: jnp.sum(cross_attention(q, k, v, 4) ** 2), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda q, k, v: jnp.sum(dense_attention(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_dense_attention_segments_default_to_query_segments():
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 6, H, D)).astype(np.float32) for _ in range(3))
    seg = jnp.array([[0, 0, 1, 1, 1, -1]])
    out = np.asarray(dense_attention(q, k, v, seg))
    np.testing.assert_allclose(out, np.asarray(dense_attention(q, k, v, seg, seg)))
    np.testing.assert_allclose(out[0, :5], ref.group_attention(q[0, :5], k[0, :5], v[0, :5], np.array([0, 0, 1, 1, 1])),
                               atol=2e-5)
    assert not out[0, 5].any()


def test_unknown_impl_is_rejected():
    mask = jnp.ones((1, 2), bool)
    x = jnp.zeros((1, 2, H, D))
    with pytest.raises(ValueError, match="unknown attention impl 'cuda'"):
        sparse_self_attention(x, x, x, full_layout(mask), impl="cuda")


@pytest.mark.parametrize("shift", [0, 4])
def test_full_512_token_window_across_default_blocks(shift):
    """A completely filled 8³ window (512 tokens) that straddles three 256-token blocks."""
    rng = np.random.default_rng(10)
    cube = np.stack(np.meshgrid(*[np.arange(8, 16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    before = np.stack(np.unravel_index(rng.choice(8 * 64 * 64, 100, replace=False), (8, 64, 64)), -1)
    coords = np.concatenate([np.zeros((612, 1), int), np.concatenate([before, cube])], 1)[rng.permutation(612)]
    qkv = rng.standard_normal((612, 3, 1, 4)).astype(np.float32)
    st = SparseTensor.from_packed(coords, np.zeros((612, 1)), capacity=640)
    x = np.zeros((1, 640, 3, 1, 4), np.float32)
    x[np.asarray(st.mask)] = qkv
    out = attend(*(jnp.asarray(x[:, :, i]) for i in range(3)), st.coords, st.mask, "window", 8, shift, 256)
    if shift == 0:
        assert np.bincount(np.unique(ref.window_keys(coords, 8, 0), return_inverse=True)[1]).max() == 512
    want = _reference(coords, qkv, "window", 8, shift)
    np.testing.assert_allclose(np.asarray(out)[0, :612], want, atol=2e-5, rtol=1e-4)


def test_key_padding_mask_alone():
    """kv_segments without q_segments masks keys for every query (padded condition tokens)."""
    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 9, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((2, 5, H, D)).astype(np.float32) for _ in range(2))
    kv_seg = np.array([[0, 0, 0, -1, -1], [3, 3, 3, 3, 3]], np.int32)
    k[0, 3:] = np.nan  # masked keys are never read
    v[0, 3:] = np.nan
    for out in (dense_attention(q, k, v, None, kv_seg),
                jax.jit(lambda *a: query_chunked_attention(*a, chunk_size=4))(q, k, v, None, kv_seg)):
        out = np.asarray(out)
        np.testing.assert_allclose(out[0], ref.attention(q[0], k[0, :3], v[0, :3]), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(out[1], ref.attention(q[1], k[1], v[1]), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk, key_block", [(16, 32), (128, 256)])
def test_extent_limited_full_attention_matches_dense_values_and_gradients(chunk, key_block):
    """Rows past the batch's last valid row are skipped; holes, an empty sample and an extent that
    ends inside a block still give dense masked attention's values and gradients."""
    from trellis_jax.sparse.attention import extent_limited_attention

    rng = np.random.default_rng(11)
    B, L = 3, 200
    q, k, v = (jnp.asarray(rng.standard_normal((B, L, H, D)), jnp.float32) for _ in range(3))
    n = np.array([77, 0, 40])
    seg = np.where(np.arange(L)[None] < n[:, None], 0, -1).astype(np.int32)
    seg[0, 10:14] = -1  # a hole
    seg[2, 5:9] = 2  # a second group
    seg = jnp.asarray(seg)
    ct = jnp.asarray(rng.standard_normal((B, L, H, D)), jnp.float32)
    ext = jax.jit(lambda q, k, v: extent_limited_attention(q, k, v, seg, chunk, key_block))
    dense = jax.jit(lambda q, k, v: dense_attention(q, k, v, seg, seg))
    np.testing.assert_allclose(np.asarray(ext(q, k, v)), np.asarray(dense(q, k, v)), atol=2e-6)
    assert not np.asarray(ext(q, k, v))[np.asarray(seg) < 0].any()
    loss = lambda f: jax.jit(jax.grad(lambda *x: jnp.sum(f(*x) * ct), argnums=(0, 1, 2)))
    for a, b in zip(loss(ext)(q, k, v), loss(dense)(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


@pytest.mark.parametrize("query_block, key_block", [(16, 8), (128, 64)])
def test_span_limited_window_attention_matches_blocked_values_and_gradients(query_block, key_block):
    """The CPU window path (keys read only over each query block's group span, the rest skipped)
    gives `blocked_segment_attention`'s values and gradients: sorted groups of many sizes, a group
    longer than a key step, padding rows inside a sample and an all-padding sample."""
    from trellis_jax.sparse.attention import blocked_segment_attention, span_limited_segment_attention

    rng = np.random.default_rng(12)
    B, L, max_group = 3, 150, 40
    sizes = [[40, 1, 7, 25, 3, 33, 12], [], [5, 40, 40, 9]]
    seg = np.full((B, L), -1, np.int32)
    for b, s in enumerate(sizes):
        seg[b, : sum(s)] = np.repeat(np.arange(len(s)) * 3 + b, s)
    seg = jnp.asarray(seg)
    q, k, v, ct = (jnp.asarray(rng.standard_normal((B, L, H, D)), jnp.float32) for _ in range(4))
    span = jax.jit(lambda q, k, v: span_limited_segment_attention(q, k, v, seg, max_group, query_block, key_block))
    blocked = jax.jit(lambda q, k, v: blocked_segment_attention(q, k, v, seg, max_group, block_size=32))
    np.testing.assert_allclose(np.asarray(span(q, k, v)), np.asarray(blocked(q, k, v)), atol=2e-6)
    assert not np.asarray(span(q, k, v))[np.asarray(seg) < 0].any()
    loss = lambda f: jax.jit(jax.grad(lambda *x: jnp.sum(f(*x) * ct), argnums=(0, 1, 2)))
    for a, b in zip(loss(span)(q, k, v), loss(blocked)(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
