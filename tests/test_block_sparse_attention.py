"""Pallas block-sparse flash attention (interpret mode on CPU) vs the XLA attention paths.

Outputs and gradients (dq, dk, dv) of `block_sparse_attention` must equal
`blocked_segment_attention` (window layouts of random voxel sets, shifted or not) and
`dense_attention` (full layouts with padding) to 1e-5 in fp32, for both grid formulations
('tpu': scalar-prefetched table + sequential grid axis; 'gpu': table as inputs + fori_loop).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.block_sparse_attention import block_sparse_attention, group_block_table, table_width
from kernels.block_sparse_attention_ref import block_sparse_attention_ref
from trellis_jax.sparse import full_layout, sparse_self_attention, window_layout
from trellis_jax.sparse.attention import blocked_segment_attention, dense_attention, take_rows

H = 2
TOL = dict(atol=1e-5, rtol=1e-5)


def _voxels(rng, counts, L, cube):
    """Distinct random voxels in a cube of side `cube` per sample, padded to L rows -> coords, mask."""
    coords = np.zeros((len(counts), L, 3), np.int32)
    mask = np.zeros((len(counts), L), bool)
    for b, n in enumerate(counts):
        flat = rng.choice(cube**3, size=n, replace=False)
        coords[b, :n] = np.stack(np.unravel_index(flat, (cube,) * 3), -1) + rng.integers(0, 40, 3)
        mask[b, :n] = True
    return jnp.asarray(coords), jnp.asarray(mask)


def _qkv(rng, B, L, D, mask, nan_padding=False):
    x = rng.standard_normal((3, B, L, H, D)).astype(np.float32)
    if nan_padding:
        x[:, ~np.asarray(mask)] = np.nan
    return tuple(jnp.asarray(t) for t in x)


def _vjp(fn, q, k, v, cotangent):
    out, pullback = jax.vjp(fn, q, k, v)
    return (out,) + pullback(cotangent)


@functools.partial(jax.jit, static_argnames=("max_group", "block_q", "block_k", "target"))
def pallas_vjp(q, k, v, seg, ct, max_group, block_q, block_k, target):
    fn = lambda q, k, v: block_sparse_attention(q, k, v, seg, max_group=max_group, block_q=block_q,
                                                block_k=block_k, target=target)
    return _vjp(fn, q, k, v, ct)


@functools.partial(jax.jit, static_argnames=("max_group", "kind"))
def xla_vjp(q, k, v, seg, ct, max_group, kind):
    if kind == "full":
        fn = lambda q, k, v: dense_attention(q, k, v, seg, seg)
    else:
        fn = lambda q, k, v: blocked_segment_attention(q, k, v, seg, max_group, block_size=64)
    return _vjp(fn, q, k, v, ct)


# (name, batch counts, L, D, window, shift, cube, block_q, block_k, target)
WINDOW_CASES = [
    ("w8", [300, 384], 384, 64, 8, 0, 12, 64, 64, "gpu"),
    ("w8_shift", [300, 384], 384, 64, 8, 4, 12, 64, 64, "tpu"),
    ("w4_shift_d80", [250, 0, 97], 256, 80, 4, 2, 9, 16, 32, "tpu"),  # 6 of 8 key blocks
    ("w4_d80", [250, 0, 97], 256, 80, 4, 0, 9, 32, 16, "gpu"),  # 11 of 16 key blocks
    ("w2_shift_small_blocks", [128, 5], 128, 64, 2, 1, 7, 16, 16, "gpu"),  # 3 of 8
]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_window_layout_matches_xla(case):
    name, counts, L, D, window, shift, cube, bq, bk, target = case
    rng = np.random.default_rng(len(name))
    coords, mask = _voxels(rng, counts, L, cube)
    layout = window_layout(coords, mask, window, shift)
    q, k, v = (take_rows(t, layout.perm) for t in _qkv(rng, len(counts), L, D, mask, nan_padding=shift > 0))
    seg = layout.segment_ids
    ct = jnp.asarray(rng.standard_normal(q.shape).astype(np.float32))
    want = xla_vjp(q, k, v, seg, ct, max_group=window**3, kind="window")
    got = pallas_vjp(q, k, v, seg, ct, max_group=window**3, block_q=bq, block_k=bk, target=target)
    for label, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert np.isfinite(np.asarray(g)).all(), label
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=label, **TOL)
    assert not np.asarray(got[0])[np.asarray(seg) < 0].any()  # padding rows output 0


# (name, valid counts, L, D, block, target)
FULL_CASES = [
    ("full_d64", [200, 37], 200, 64, 64, "tpu"),
    ("full_d80", [200, 37], 200, 80, 64, "gpu"),
    ("full_one_block", [100, 1, 64], 100, 64, 128, "tpu"),
]


@pytest.mark.parametrize("case", FULL_CASES, ids=[c[0] for c in FULL_CASES])
def test_full_layout_with_padding_matches_dense(case):
    name, counts, L, D, block, target = case
    rng = np.random.default_rng(len(name))
    mask = jnp.asarray(np.arange(L)[None] < np.asarray(counts)[:, None])
    q, k, v = _qkv(rng, len(counts), L, D, mask, nan_padding=True)
    seg = full_layout(mask).segment_ids
    ct = jnp.asarray(rng.standard_normal(q.shape).astype(np.float32))
    want = xla_vjp(q, k, v, seg, ct, max_group=L, kind="full")
    got = pallas_vjp(q, k, v, seg, ct, max_group=L, block_q=block, block_k=block, target=target)
    for label, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=label, **TOL)


@pytest.mark.parametrize("kind", ["full", "window"])
def test_sparse_self_attention_pallas_equals_xla(kind):
    rng = np.random.default_rng(7)
    coords, mask = _voxels(rng, [180, 60], 192, 10)
    q, k, v = _qkv(rng, 2, 192, 64, mask)
    layout = full_layout(mask) if kind == "full" else window_layout(coords, mask, 8, 4)
    run = jax.jit(lambda q, k, v, layout: (sparse_self_attention(q, k, v, layout, impl="pallas"),
                                           sparse_self_attention(q, k, v, layout, impl="xla")))
    got, want = run(q, k, v, layout)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_reference_matches_xla():
    rng = np.random.default_rng(3)
    coords, mask = _voxels(rng, [250, 97], 256, 9)
    layout = window_layout(coords, mask, 4, 2)
    q, k, v = (take_rows(t, layout.perm) for t in _qkv(rng, 2, 256, 16, mask))
    got = block_sparse_attention_ref(q, k, v, layout.segment_ids, max_group=64, block_q=32, block_k=64)
    want = blocked_segment_attention(q, k, v, layout.segment_ids, 64, block_size=64)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def _brute_force_table(seg, block_rows, block_cols):
    """For every row block, the sorted set of column blocks holding a token of one of its groups."""
    out = []
    for row in seg:
        blocks = []
        for i in range(len(row) // block_rows):
            ids = {s for s in row[i * block_rows:(i + 1) * block_rows] if s >= 0}
            cols = {j // block_cols for j, s in enumerate(row) if s in ids}
            blocks.append(sorted(cols))
        out.append(blocks)
    return out


def test_block_table_is_exact_and_sparse():
    rng = np.random.default_rng(11)
    L, max_group = 256, 20
    seg = np.full((3, L), -1, np.int32)
    pos, gid = 0, 0
    while pos < 230:  # contiguous runs of 1..20 tokens, padding sprinkled inside and between runs
        n = int(rng.integers(1, max_group + 1))
        run = np.where(rng.random(n) < 0.2, -1, gid)
        seg[0, pos:pos + n] = run
        pos, gid = pos + n, gid + 1
    seg[1, :128] = np.repeat(np.arange(8), 16)  # full blocks, a padding tail
    seg[2] = -1  # an all-padding sample
    for br, bc in ((16, 32), (32, 16), (64, 64)):
        width = table_width(br, bc, max_group, L // bc)
        assert width < L // bc
        first, count = (np.asarray(t) for t in group_block_table(jnp.asarray(seg), br, bc, width))
        for b, blocks in enumerate(_brute_force_table(seg, br, bc)):
            for i, cols in enumerate(blocks):
                assert count[b, i] <= width
                if not cols:
                    assert count[b, i] == 0
                    continue
                assert first[b, i] <= cols[0] and cols[-1] < first[b, i] + count[b, i], (b, i, cols)
                assert count[b, i] == cols[-1] - cols[0] + 1  # no block outside the groups' span


def test_bad_arguments_raise():
    q = jnp.zeros((1, 16, H, 8))
    seg = jnp.zeros((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="block_q"):
        block_sparse_attention(q, q, q, seg, max_group=16, block_q=48)
    with pytest.raises(ValueError, match="segment_ids"):
        block_sparse_attention(q, q, q, seg[:, :8], max_group=16)
    with pytest.raises(ValueError, match="target"):
        block_sparse_attention(q, q, q, seg, max_group=16, target="cpu")


def _export_fwd_bwd(platform, target, head_dim=80):
    """Lower forward + backward for `platform` from this CPU host (Pallas -> Mosaic / Triton IR; the
    backend's own compile, Mosaic layout passes or Triton -> PTX, needs the device and is not run)."""
    def loss_grads(q, k, v):
        seg = jnp.asarray(np.repeat(np.arange(4), 128)[None], jnp.int32)
        fn = lambda *a: jnp.sum(block_sparse_attention(*a, seg, max_group=512, target=target, interpret=False) ** 2)
        return jax.grad(fn, argnums=(0, 1, 2))(q, k, v)

    x = jax.ShapeDtypeStruct((1, 512, H, head_dim), jnp.bfloat16)
    checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")] if platform == "cuda" else []
    exported = jax.export.export(jax.jit(loss_grads), platforms=[platform], disabled_checks=checks)(x, x, x)
    return exported.mlir_module()


def test_lowers_for_tpu_mosaic():
    text = _export_fwd_bwd("tpu", "tpu")
    assert text.count("tpu_custom_call") == 3  # forward, dq, dk/dv


def test_lowers_for_gpu_triton():
    if not hasattr(jax.sharding, "AbstractDevice"):  # pragma: no cover - older jax
        pytest.skip("no abstract GPU device in this jax")
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        text = _export_fwd_bwd("cuda", "gpu")
    assert text.count("xla.gpu.triton") == 3
