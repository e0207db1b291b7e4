"""Block-sparse flash attention among contiguous token groups (Pallas: TPU/Mosaic, GPU/Triton, interpret).

Tokens are sorted so that every group (segment id >= 0) is one contiguous run; -1 marks padding.
A query block can then only meet keys of its own groups inside a short span of key blocks, at most
`block_q + 2·(max_group − 1)` tokens long. `group_block_table` records, per query block, the first
such key block and how many there are; the kernels visit only those, so the work is
O(L · window) instead of O(L²), with the usual flash online softmax (f32 statistics).

Two grid formulations of the same math (`target`):

* 'tpu': grid (B, H, row blocks, table width). The table is scalar-prefetched into SMEM and
  drives the BlockSpec index maps (Mosaic double-buffers the DMAs); steps past a block's count
  repeat the last block index (no new copy) and skip their compute with `pl.when`. Accumulators
  live in VMEM scratch across the last, sequential grid axis.
* 'gpu': grid (B, H, row blocks); Triton has no scalar prefetch, so the table entries are kernel
  inputs and each program runs a `fori_loop` over exactly `count` key blocks of the whole
  [L, D] key/value slab.

The backward pass (`jax.custom_vjp`) recomputes the probabilities from the saved log-sum-exp:
a dq kernel walks the same table, a dk/dv kernel walks the transposed table (for each key block
the query blocks that can see it; the same construction, since queries and keys share segments).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_NEG = -1e30  # masked logit; finite so that fully masked rows never produce inf - inf


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ----------------------------------------------------------------------------- block tables


def table_width(block_rows: int, block_cols: int, max_group: int, num_col_blocks: int) -> int:
    """Static bound on the column blocks one row block needs: its groups span at most
    block_rows + 2·(max_group − 1) tokens, which touch at most ⌈span / block_cols⌉ + 1 blocks."""
    span = block_rows + 2 * (max_group - 1)
    return max(1, min(num_col_blocks, -(-span // block_cols) + 1))


def group_block_table(segment_ids: jax.Array, block_rows: int, block_cols: int, width: int):
    """(first, count) int32 [B, L / block_rows]: for every row block, the first column block and the
    number of consecutive column blocks that hold tokens of the row block's groups.

    segment_ids int32 [B, L] (L a multiple of both block sizes), each group one contiguous run among
    the valid tokens (padding, id −1, may sit anywhere and is skipped). A block with no valid token
    gets count 0. Counts are clipped to `width` (exact when every run, padding inside it included,
    is at most `max_group` tokens long, as `table_width` assumes).
    """
    B, L = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    valid = segment_ids >= 0
    # Nearest valid neighbour on each side (padding is transparent to the runs).
    prev = jax.lax.cummax(jnp.where(valid, idx, -1), axis=1)
    prev = jnp.pad(prev[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    nxt = jax.lax.cummin(jnp.where(valid, idx, L), axis=1, reverse=True)
    nxt = jnp.pad(nxt[:, 1:], ((0, 0), (0, 1)), constant_values=L)
    prev_seg = jnp.take_along_axis(segment_ids, jnp.maximum(prev, 0), axis=1)
    next_seg = jnp.take_along_axis(segment_ids, jnp.minimum(nxt, L - 1), axis=1)
    is_start = valid & ((prev < 0) | (prev_seg != segment_ids))
    is_end = valid & ((nxt >= L) | (next_seg != segment_ids))
    run_start = jax.lax.cummax(jnp.where(is_start, idx, -1), axis=1)
    run_end = jax.lax.cummin(jnp.where(is_end, idx, L), axis=1, reverse=True)
    lo = jnp.where(valid, run_start, L).reshape(B, -1, block_rows).min(-1)
    hi = jnp.where(valid, run_end, -1).reshape(B, -1, block_rows).max(-1)
    some = hi >= 0
    first = jnp.where(some, lo // block_cols, 0)
    count = jnp.where(some, hi // block_cols - lo // block_cols + 1, 0)
    return first.astype(jnp.int32), jnp.minimum(count, width).astype(jnp.int32)


# ----------------------------------------------------------------------------- shared block math


def _logits(q, k, q_seg, k_seg, scale):
    """q [bq, D], k [bk, D], q_seg [bq, 1], k_seg [1, bk] -> (scaled logits f32 [bq, bk], allowed)."""
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    return s, (q_seg == k_seg) & (q_seg >= 0)


def _online_softmax_step(carry, q, k, v, q_seg, k_seg, scale):
    """One flash step: fold key block (k, v) into (m [bq,1], l [bq,1], acc [bq,D]) (all f32)."""
    m_prev, l_prev, acc_prev = carry
    s, allowed = _logits(q, k, q_seg, k_seg, scale)
    m_new = jnp.maximum(m_prev, jnp.max(jnp.where(allowed, s, _NEG), axis=1, keepdims=True))
    p = jnp.where(allowed, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    l_new = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
    acc_new = alpha * acc_prev + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l_new, acc_new


def _finish(m, l, acc):
    """-> (output [bq, D] f32, log-sum-exp [bq, 1]); rows that saw no key (padding) give 0 and 0."""
    seen = l > 0.0
    out = acc / jnp.where(seen, l, 1.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    return out, lse


def _probs_and_dlogits(q, k, v, do, lse, delta, q_seg, k_seg, scale):
    """Recomputed probabilities p and dL/dlogits (before scale) of one (q block, k block) pair, f32."""
    s, allowed = _logits(q, k, q_seg, k_seg, scale)
    p = jnp.where(allowed, jnp.exp(s - lse), 0.0)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return p, p * (dp - delta)


def _tdot(a, b):
    """a [n, x]ᵀ @ b [n, y] -> [x, y] f32 (an explicit transpose, the form Mosaic and Triton both take)."""
    return jnp.dot(a.T, b, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class _Config:
    scale: float
    block_q: int
    block_k: int
    width: int  # key blocks per query block (forward, dq)
    width_t: int  # query blocks per key block (dk, dv)
    target: str  # 'tpu' | 'gpu'
    interpret: bool


def _gpu_params(cfg, head_dim):
    if cfg.interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    warps = 4 if cfg.block_q * cfg.block_k <= 64 * 64 or head_dim <= 64 else 8
    return plgpu.CompilerParams(num_warps=warps, num_stages=2)


def _tpu_params(cfg):
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _table_block(table_first, table_count, j):
    """Block index of step j: steps past the count repeat the last valid block (no new DMA)."""
    return table_first + jnp.minimum(j, jnp.maximum(table_count - 1, 0))


# ----------------------------------------------------------------------------- forward kernels


def _fwd_kernel_tpu(first_ref, count_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref,
                    m_sc, l_sc, acc_sc, *, scale):
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _():
        m_sc[...] = jnp.full(m_sc.shape, _NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(j < count_ref[b, i])
    def _():
        carry = (m_sc[...], l_sc[...], acc_sc[...])
        m, l, acc = _online_softmax_step(carry, q_ref[...], k_ref[...], v_ref[...], qs_ref[...], ks_ref[...], scale)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        out, lse = _finish(m_sc[...], l_sc[...], acc_sc[...])
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = lse


def _fwd_kernel_gpu(first_ref, count_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, *, scale, block_k):
    first, count = first_ref[...], count_ref[...]
    q, q_seg = q_ref[...], qs_ref[...]
    bq, d = q.shape

    def body(j, carry):
        rows = pl.ds((first + j) * block_k, block_k)
        return _online_softmax_step(carry, q, k_ref[rows, :], v_ref[rows, :], q_seg, ks_ref[:, rows], scale)

    init = (jnp.full((bq, 1), _NEG, jnp.float32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros((bq, d), jnp.float32))
    out, lse = _finish(*jax.lax.fori_loop(0, count, body, init))
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def _forward(cfg: _Config, q, k, v, q_seg, k_seg, table):
    """q/k/v [B, H, L, D], q_seg [B, L, 1], k_seg [B, 1, L] -> (out [B, H, L, D], lse f32 [B, H, L, 1])."""
    B, H, L, D = q.shape
    bq, bk = cfg.block_q, cfg.block_k
    first, count = table
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, L, 1), jnp.float32)]
    if cfg.target == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        kv_map = lambda b, h, i, j, f, c: (b, h, _table_block(f[b, i], c[b, i], j), 0)
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, H, L // bq, cfg.width),
            in_specs=[
                pl.BlockSpec((None, None, bq, D), lambda b, h, i, j, f, c: (b, h, i, 0)),
                pl.BlockSpec((None, None, bk, D), kv_map),
                pl.BlockSpec((None, None, bk, D), kv_map),
                pl.BlockSpec((None, bq, 1), lambda b, h, i, j, f, c: (b, i, 0)),
                pl.BlockSpec((None, 1, bk), lambda b, h, i, j, f, c: (b, 0, _table_block(f[b, i], c[b, i], j))),
            ],
            out_specs=[
                pl.BlockSpec((None, None, bq, D), lambda b, h, i, j, f, c: (b, h, i, 0)),
                pl.BlockSpec((None, None, bq, 1), lambda b, h, i, j, f, c: (b, h, i, 0)),
            ],
            scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                            pltpu.VMEM((bq, D), jnp.float32)],
        )
        return pl.pallas_call(
            functools.partial(_fwd_kernel_tpu, scale=cfg.scale), grid_spec=grid_spec, out_shape=out_shape,
            compiler_params=None if cfg.interpret else _tpu_params(cfg), interpret=cfg.interpret,
            name="block_sparse_attention_fwd",
        )(first, count, q, k, v, q_seg, k_seg)
    return pl.pallas_call(
        functools.partial(_fwd_kernel_gpu, scale=cfg.scale, block_k=bk),
        grid=(B, H, L // bq),
        in_specs=[
            pl.BlockSpec((None, None), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, None), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, L, D), lambda b, h, i: (b, h, 0, 0)),
            pl.BlockSpec((None, None, L, D), lambda b, h, i: (b, h, 0, 0)),
            pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0)),
            pl.BlockSpec((None, 1, L), lambda b, h, i: (b, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0)),
        ],
        out_shape=out_shape, compiler_params=_gpu_params(cfg, D), interpret=cfg.interpret,
        name="block_sparse_attention_fwd",
    )(first, count, q, k, v, q_seg, k_seg)


# ----------------------------------------------------------------------------- backward kernels


def _dq_kernel_tpu(first_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
                   dq_ref, dq_sc, *, scale):
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when(j < count_ref[b, i])
    def _():
        k = k_ref[...]
        _, ds = _probs_and_dlogits(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                                   qs_ref[...], ks_ref[...], scale)
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkdv_kernel_tpu(first_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
                     dk_ref, dv_ref, dk_sc, dv_sc, *, scale):
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when(j < count_ref[b, i])
    def _():
        q, do = q_ref[...], do_ref[...]
        p, ds = _probs_and_dlogits(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...],
                                   qs_ref[...], ks_ref[...], scale)
        dv_sc[...] += _tdot(p.astype(do.dtype), do)
        dk_sc[...] += _tdot(ds.astype(q.dtype), q)

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel_gpu(first_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
                   dq_ref, *, scale, block_k):
    first, count = first_ref[...], count_ref[...]
    q, do, lse, delta, q_seg = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...], qs_ref[...]

    def body(j, dq):
        rows = pl.ds((first + j) * block_k, block_k)
        k = k_ref[rows, :]
        _, ds = _probs_and_dlogits(q, k, v_ref[rows, :], do, lse, delta, q_seg, ks_ref[:, rows], scale)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    dq = jax.lax.fori_loop(0, count, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkdv_kernel_gpu(first_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
                     dk_ref, dv_ref, *, scale, block_q):
    first, count = first_ref[...], count_ref[...]
    k, v, k_seg = k_ref[...], v_ref[...], ks_ref[...]

    def body(j, carry):
        dk, dv = carry
        rows = pl.ds((first + j) * block_q, block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        p, ds = _probs_and_dlogits(q, k, v, do, lse_ref[rows, :], delta_ref[rows, :], qs_ref[rows, :], k_seg, scale)
        return dk + _tdot(ds.astype(q.dtype), q), dv + _tdot(p.astype(do.dtype), do)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, count, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward_call(cfg: _Config, which: str, args, table):
    """One backward pallas_call. which='dq': grid over query blocks walking `table`;
    which='dkdv': grid over key blocks walking the transposed table."""
    q, k, v, do, lse, delta, q_seg, k_seg = args
    B, H, L, D = q.shape
    bq, bk = cfg.block_q, cfg.block_k
    first, count = table
    dq_pass = which == "dq"
    own, other = (bq, bk) if dq_pass else (bk, bq)  # block of the grid axis / of the walked axis
    width = cfg.width if dq_pass else cfg.width_t
    if dq_pass:
        out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    else:
        out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]

    if cfg.target == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        fixed = lambda b, h, i, j, f, c: (b, h, i, 0)
        walked = lambda b, h, i, j, f, c: (b, h, _table_block(f[b, i], c[b, i], j), 0)
        q_side, k_side = (fixed, walked) if dq_pass else (walked, fixed)
        qs_map = lambda b, h, i, j, f, c: (b, q_side(b, h, i, j, f, c)[2], 0)
        ks_map = lambda b, h, i, j, f, c: (b, 0, k_side(b, h, i, j, f, c)[2])
        in_specs = [
            pl.BlockSpec((None, None, bq, D), q_side),  # q
            pl.BlockSpec((None, None, bk, D), k_side),  # k
            pl.BlockSpec((None, None, bk, D), k_side),  # v
            pl.BlockSpec((None, None, bq, D), q_side),  # do
            pl.BlockSpec((None, None, bq, 1), q_side),  # lse
            pl.BlockSpec((None, None, bq, 1), q_side),  # delta
            pl.BlockSpec((None, bq, 1), qs_map),
            pl.BlockSpec((None, 1, bk), ks_map),
        ]
        out_specs = [pl.BlockSpec((None, None, own, D), fixed) for _ in out_shape]
        scratch = [pltpu.VMEM((own, D), jnp.float32) for _ in out_shape]
        kernel = _dq_kernel_tpu if dq_pass else _dkdv_kernel_tpu
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, H, L // own, width), in_specs=in_specs, out_specs=out_specs,
            scratch_shapes=scratch)
        return pl.pallas_call(
            functools.partial(kernel, scale=cfg.scale), grid_spec=grid_spec, out_shape=out_shape,
            compiler_params=None if cfg.interpret else _tpu_params(cfg), interpret=cfg.interpret,
            name=f"block_sparse_attention_{which}",
        )(first, count, *args)

    block = lambda rows: (lambda b, h, i: (b, h, i, 0)) if rows != L else (lambda b, h, i: (b, h, 0, 0))
    q_rows, k_rows = (bq, L) if dq_pass else (L, bk)
    in_specs = [
        pl.BlockSpec((None, None), lambda b, h, i: (b, i)),
        pl.BlockSpec((None, None), lambda b, h, i: (b, i)),
        pl.BlockSpec((None, None, q_rows, D), block(q_rows)),  # q
        pl.BlockSpec((None, None, k_rows, D), block(k_rows)),  # k
        pl.BlockSpec((None, None, k_rows, D), block(k_rows)),  # v
        pl.BlockSpec((None, None, q_rows, D), block(q_rows)),  # do
        pl.BlockSpec((None, None, q_rows, 1), block(q_rows)),  # lse
        pl.BlockSpec((None, None, q_rows, 1), block(q_rows)),  # delta
        pl.BlockSpec((None, q_rows, 1), lambda b, h, i: (b, i if q_rows != L else 0, 0)),
        pl.BlockSpec((None, 1, k_rows), lambda b, h, i: (b, 0, i if k_rows != L else 0)),
    ]
    out_specs = [pl.BlockSpec((None, None, own, D), lambda b, h, i: (b, h, i, 0)) for _ in out_shape]
    if dq_pass:
        kernel = functools.partial(_dq_kernel_gpu, scale=cfg.scale, block_k=bk)
    else:
        kernel = functools.partial(_dkdv_kernel_gpu, scale=cfg.scale, block_q=bq)
    return pl.pallas_call(
        kernel, grid=(B, H, L // own), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        compiler_params=_gpu_params(cfg, D), interpret=cfg.interpret, name=f"block_sparse_attention_{which}",
    )(first, count, *args)


# ----------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(cfg, q, k, v, q_seg, k_seg, table, table_t):
    return _forward(cfg, q, k, v, q_seg, k_seg, table)[0]


def _attend_fwd(cfg, q, k, v, q_seg, k_seg, table, table_t):
    out, lse = _forward(cfg, q, k, v, q_seg, k_seg, table)
    return out, (q, k, v, q_seg, k_seg, table, table_t, out, lse)


def _attend_bwd(cfg, res, do):
    q, k, v, q_seg, k_seg, table, table_t, out, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    args = (q, k, v, do, lse, delta, q_seg, k_seg)
    (dq,) = _backward_call(cfg, "dq", args, table)
    dk, dv = _backward_call(cfg, "dkdv", args, table_t)
    return dq, dk, dv, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# ----------------------------------------------------------------------------- public API


def default_target() -> str:
    """'tpu' on TPU, else 'gpu' (the Triton formulation; also the cheaper one to interpret on CPU)."""
    return "tpu" if jax.default_backend() == "tpu" else "gpu"


def block_sparse_attention(q, k, v, segment_ids, *, max_group: int, block_q: int = 128, block_k: int = 128,
                           scale: float | None = None, interpret: bool | None = None, target: str | None = None):
    """Attention among tokens of equal segment id: q/k/v [B, L, H, D], segment_ids int32 [B, L] -> [B, L, H, D].

    Tokens must be sorted so every group (id >= 0) is one contiguous run of at most `max_group`
    tokens (padding inside a run counts); id −1 is padding: it attends to nothing and is never
    attended to, and its output rows are 0. Same results as `blocked_segment_attention` /
    `dense_attention` with these segments. Differentiable (flash backward kernels).

    block_q / block_k: powers of two (≥ 8; TPU needs multiples of 128 for block_k and 8 for
    block_q unless the block covers the whole padded sequence, Triton ≥ 16; blocks shrink to
    max(16, next power of two ≥ L) for short inputs). interpret: None = on CPU only. target: 'tpu' | 'gpu' grid formulation,
    None = `default_target()`. The head dim is zero-padded to a power of two (≥ 16) for Triton.
    """
    B, L, H, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, L, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    if segment_ids.shape != (B, L):
        raise ValueError(f"segment_ids must be [B, L] = {(B, L)}; got {segment_ids.shape}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if blk < 8 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 8; got {blk}")
    if max_group < 1:
        raise ValueError(f"max_group must be >= 1; got {max_group}")
    target = default_target() if target is None else target
    if target not in ("tpu", "gpu"):
        raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")
    interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    short = max(16, _next_pow2(L))
    bq, bk = min(block_q, short), min(block_k, short)
    Lp = -(-L // max(bq, bk)) * max(bq, bk)
    Dp = D if target == "tpu" else max(16, _next_pow2(D))
    nq, nk = Lp // bq, Lp // bk
    cfg = _Config(scale=scale, block_q=bq, block_k=bk,
                  width=table_width(bq, bk, max_group, nk), width_t=table_width(bk, bq, max_group, nq),
                  target=target, interpret=interpret)

    seg = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, Lp - L)), constant_values=-1)
    keep = (segment_ids >= 0)[:, :, None, None]

    def prepare(x):  # zero padding rows (0·NaN is NaN), [B, L, H, D] -> [B, H, Lp, Dp]
        x = jnp.where(keep, x, jnp.zeros((), x.dtype))
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, Lp - L), (0, Dp - D)))

    table = group_block_table(seg, bq, bk, cfg.width)
    table_t = group_block_table(seg, bk, bq, cfg.width_t)
    out = _attend(cfg, prepare(q), prepare(k), prepare(v), seg[:, :, None], seg[:, None, :], table, table_t)
    return out[:, :, :L, :D].transpose(0, 2, 1, 3)
