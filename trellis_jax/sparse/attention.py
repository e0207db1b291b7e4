"""Attention over padded voxel sets: full (per sample), 3D shifted windows, and cross-attention.

One API, two implementations:

* `impl="xla"`: pure JAX. Full attention is masked attention over each sample, computed a chunk
  of queries at a time against blocks of keys with an online softmax (rematerialised in the backward
  pass: memory O(chunk·L), not O(L²)); chunks and blocks past the batch's last valid row are skipped,
  so a set with n of L rows valid costs O(n²), not O(L²).
  Window attention sorts the tokens of each sample by window, cuts the sorted sequence into
  blocks of `block_size`, and lets every query block attend only to the 2r+1 key blocks around it
  (r = ⌈(max_window−1)/block⌉, the farthest a same-window token can be), masked by window id.
  Work is O(L·window), not O(L²). On CPU, `span_limited_segment_attention` instead reads only
  the keys of the groups each query block touches, skipping the rest with real branches.
* `impl="pallas"`: the block-sparse flash-attention kernel in `kernels/` (forward + backward),
  driven by the same `AttentionLayout`.

The grouping is described once per (coords, shift) by an `AttentionLayout` and reused by every
block that shares it, as the reference caches its window partitions.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from trellis_jax.sparse.neighbors import COORD_LIMIT

_NEG = -1e30


@struct.dataclass
class AttentionLayout:
    """Grouping of each sample's tokens for self-attention.

    perm        int32 [B, L]  sorted position -> original row (tokens grouped by window id)
    inv_perm    int32 [B, L]  original row -> sorted position
    segment_ids int32 [B, L]  group id of each *sorted* token; -1 for padding
    kind        'full' | 'window' (static)
    max_group   static upper bound on tokens per group (window_size³, or L for 'full')
    """

    perm: jax.Array
    inv_perm: jax.Array
    segment_ids: jax.Array
    kind: str = struct.field(pytree_node=False, default="full")
    max_group: int = struct.field(pytree_node=False, default=0)


def full_layout(mask: jax.Array) -> AttentionLayout:
    """Every valid token of a sample attends to every valid token of the same sample."""
    B, L = mask.shape
    ident = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    seg = jnp.where(mask, 0, -1).astype(jnp.int32)
    return AttentionLayout(ident, ident, seg, kind="full", max_group=L)


def window_ids(coords: jax.Array, window_size: int, shift: int) -> jax.Array:
    """Window id of each voxel: ⌊(p + shift)/window⌋ per axis, linearised (x slowest).

    Within one sample this groups tokens exactly like the reference's key
    b·Πnw + ⌊q0/w⌋·nw1·nw2 + ⌊q1/w⌋·nw2 + ⌊q2/w⌋ with q = p + shift (samples never mix here
    because every sample has its own rows).
    """
    n = COORD_LIMIT // window_size + 2
    w = (coords.astype(jnp.int32) + shift) // window_size
    return (w[..., 0] * n + w[..., 1]) * n + w[..., 2]


def window_layout(coords: jax.Array, mask: jax.Array, window_size: int = 8, shift: int = 0) -> AttentionLayout:
    """3D (shifted) window partition of coords [B, L, 3] (mask [B, L])."""
    ids = jnp.where(mask, window_ids(coords, window_size, shift), jnp.iinfo(jnp.int32).max)
    perm = jnp.argsort(ids, axis=-1, stable=True).astype(jnp.int32)
    sorted_ids = jnp.take_along_axis(ids, perm, axis=-1)
    sorted_valid = jnp.take_along_axis(mask, perm, axis=-1)
    seg = jnp.where(sorted_valid, sorted_ids, -1).astype(jnp.int32)
    inv = jax.vmap(lambda p: jnp.zeros_like(p).at[p].set(jnp.arange(p.shape[0], dtype=p.dtype)))(perm)
    return AttentionLayout(perm, inv, seg, kind="window", max_group=window_size**3)


def swin_layout(coords: jax.Array, mask: jax.Array, window_size: int, block_index: int) -> AttentionLayout:
    """The layout of transformer block `block_index`: shift = (window/2)·(block_index mod 2)."""
    return window_layout(coords, mask, window_size, (window_size // 2) * (block_index % 2))


# ----------------------------------------------------------------------------- XLA kernels


def _key_bias(allowed):
    """bool mask [..., Lq|1, Lk] -> the additive f32 logit bias of `_softmax_attend` (0 allowed, _NEG not)."""
    return jnp.where(allowed, 0.0, _NEG).astype(jnp.float32)


def _kv_layout(k, v):
    """k, v [..., L, H, D] -> (k [..., H, D, L], v [..., H, L, D]): the layouts `_softmax_attend`'s two
    products read without a copy."""
    return jnp.moveaxis(k, -3, -1), jnp.swapaxes(v, -2, -3)


def _softmax_attend(q, k, v, scale, bias=None):
    """q [..., Lq, H, D], k [..., H, D, Lk] and v [..., H, Lk, D] (`_kv_layout`), optional bias f32
    [..., Lq|1, Lk] (`_key_bias`) -> [..., Lq, H, D].

    f32 softmax, written so that XLA CPU compiles the whole product into one fused kernel: the scale
    is folded into q, masking is an added bias (no selects on the [H, Lq, Lk] logits), and the
    normalisation divides the [H, Lq, D] output instead of the weights (3× faster than the select and
    normalise-then-multiply form at G_S's 4096 tokens; k/v come in the products' layouts so that a loop
    over query chunks transposes them once, not per chunk). With a bias, a query with no allowed key
    (its max logit stays at _NEG) gets 0 output and finite gradients.
    """
    logits = jnp.einsum("...qhd,...hdk->...hqk", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias[..., None, :, :]
    m = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - m)
    out = jnp.einsum("...hqk,...hkd->...hqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / jnp.sum(p, axis=-1, keepdims=True)
    if bias is not None:
        out = jnp.where(m > _NEG / 2, out, 0.0)
    return jnp.swapaxes(out, -2, -3).astype(q.dtype)


def dense_attention(q, k, v, q_segments=None, kv_segments=None, scale=None, causal: bool = False):
    """Plain multi-head attention q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    With segment ids ([B, Lq], [B, Lk]; kv defaults to q's), a query attends only to keys of the
    same non-negative id; queries of id -1 get output 0. With kv_segments alone, every query
    attends to the keys of non-negative id (a key padding mask). `causal`: query i attends to keys
    j <= i only (CLIP's text tower).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v, allowed = _apply_segments(q, k, v, q_segments, kv_segments)
    if causal:
        tril = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
        allowed = tril if allowed is None else allowed & tril
    return _softmax_attend(q, *_kv_layout(k, v), scale, None if allowed is None else _key_bias(allowed))


def _apply_segments(q, k, v, q_segments, kv_segments):
    """(q, k, v with padding rows zeroed, allowed bool [B, Lq|1, Lk] or None = all) for the segment ids."""
    if q_segments is None and kv_segments is None:
        return q, k, v, None
    if q_segments is None:
        return q, _zero_padding(k, kv_segments), _zero_padding(v, kv_segments), (kv_segments >= 0)[:, None, :]
    kv_segments = q_segments if kv_segments is None else kv_segments
    allowed = (q_segments[:, :, None] == kv_segments[:, None, :]) & (q_segments[:, :, None] >= 0)
    return _zero_padding(q, q_segments), _zero_padding(k, kv_segments), _zero_padding(v, kv_segments), allowed


def _zero_padding(x, segment_ids):
    """Zero the padding rows (segment -1) of q/k/v [B, L, H, D]. Their attention weights are exactly
    0, but 0·NaN is not: non-finite padding would otherwise reach valid outputs (through v) or valid
    gradients (dk sums over padding queries, dq over padding keys)."""
    return jnp.where((segment_ids >= 0)[:, :, None, None], x, jnp.zeros((), x.dtype))


def _pad_blocks(x, num_blocks, block, fill):
    pad = num_blocks * block - x.shape[1]
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, widths, constant_values=fill)
    return x.reshape((x.shape[0], num_blocks, block) + x.shape[2:])


def _neighbourhoods(x, radius, count):
    """[B, count + 2r, blk, ...] -> [B, count, (2r+1)·blk, ...]: block i with blocks i..i+2r of x
    (x carries r halo blocks on each side)."""
    views = [x[:, i : i + count] for i in range(2 * radius + 1)]
    out = jnp.stack(views, axis=2)  # [B, count, 2r+1, blk, ...]
    return out.reshape(out.shape[:2] + (-1,) + out.shape[4:])


def _with_halo(x, radius, num_blocks, block, fill):
    """[B, L, ...] -> [B, num_blocks + 2r, blk, ...]: r fill blocks in front, fill after the end."""
    x = jnp.pad(x, [(0, 0), (radius * block, 0)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return _pad_blocks(x, num_blocks + 2 * radius, block, fill)


def _update_slices(fn, buf, count: int, size: int, axis: int):
    """buf with its `count` consecutive slices of `size` along `axis` each replaced, in turn, by
    fn(i, slice i) (same shape): the query-block loop of the attentions here, as a loop that writes
    each block's output over its queries in place (`span_limited_segment_attention` has its own, for a
    last block that overlaps its predecessor).

    lax.map would stack the outputs in a separate zero-initialised buffer, and XLA CPU hoists those
    zeros to the start of the program, one [L, H, D] buffer per transformer block all alive at once
    (0.8 of the Gaussian decoder's 1.45 GiB of temporaries)."""
    def body(i, buf):
        part = jax.lax.dynamic_slice_in_dim(buf, i * size, size, axis)
        return jax.lax.dynamic_update_slice_in_dim(buf, fn(i, part).astype(buf.dtype), i * size, axis)

    return jax.lax.fori_loop(0, count, body, buf)


_QUERIES_PER_STEP = 256  # query tokens per sequential step of blocked_segment_attention (CPU: 2-4 blocks of 128
# or 1 of 256 per step ran 15-25% faster than 4 of 256; larger steps only add live logits)


def blocked_segment_attention(q, k, v, segment_ids, max_group, block_size=256, scale=None):
    """Attention among tokens of equal segment id, for *sorted* tokens whose groups are contiguous
    and at most `max_group` long. q/k/v [B, L, H, D], segment_ids [B, L] (-1 = padding).

    The query blocks are processed ~`_QUERIES_PER_STEP` tokens at a time in a sequential map, each step
    rematerialised in the backward pass: the live logits stay O(step · window) whatever L is, so
    time grows linearly in L (materialising all blocks' logits at once, ~2 GB at 32K tokens and
    12 heads, made the CPU forward superlinear past 16K) and the backward never holds more.
    """
    B, L, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    block = min(block_size, L)
    nb = -(-L // block)
    radius = min(nb - 1, -(-(max_group - 1) // block))
    step = max(1, min(nb, _QUERIES_PER_STEP // block))
    num_steps = -(-nb // step)
    padded = num_steps * step
    q, k, v = (_zero_padding(t, segment_ids) for t in (q, k, v))
    qb = _pad_blocks(q, padded, block, 0)  # [B, padded, block, H, D]
    sq = _pad_blocks(segment_ids, padded, block, -1)
    kh, vh = (_with_halo(t, radius, padded, block, 0) for t in (k, v))  # [B, padded + 2r, block, H, D]
    sh = _with_halo(segment_ids, radius, padded, block, -1)

    @jax.checkpoint  # only q/k/v are kept for the backward pass, not a step's logits
    def one_step(i, q_i):  # q_i [B, step, block, H, D]
        rows = lambda x, n: jax.lax.dynamic_slice_in_dim(x, i * step, n, axis=1)
        s_q = rows(sq, step)
        s_k = _neighbourhoods(rows(sh, step + 2 * radius), radius, step)
        allowed = (s_q[..., :, None] == s_k[..., None, :]) & (s_q[..., :, None] >= 0)
        k_i, v_i = (_neighbourhoods(rows(t, step + 2 * radius), radius, step) for t in (kh, vh))
        return _softmax_attend(q_i, *_kv_layout(k_i, v_i), scale, _key_bias(allowed))

    out = _update_slices(one_step, qb, num_steps, step, axis=1)  # [B, padded, block, H, D]
    return out.reshape(B, padded * block, H, D)[:, :L]


def query_chunked_attention(q, k, v, q_segments=None, kv_segments=None, chunk_size=256, scale=None):
    """`dense_attention`, computed `chunk_size` queries at a time.

    q [B, Lq, H, D], k/v [B, Lk, H, D], optional segment ids as in `dense_attention`. Each chunk
    is rematerialised in the backward pass, so peak memory is O(chunk·Lk) logits instead of
    O(Lq·Lk) (per-sample full attention at L ≈ 20K; cross-attention to 1374 image tokens).
    """
    B, Lq, H, D = q.shape
    if Lq <= chunk_size:
        return dense_attention(q, k, v, q_segments, kv_segments, scale)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    n = -(-Lq // chunk_size)
    q, k, v, allowed = _apply_segments(q, k, v, q_segments, kv_segments)
    k, v = _kv_layout(k, v)
    qp = _pad_blocks(q, n, chunk_size, 0).reshape(B, n * chunk_size, H, D)  # padded rows sliced off below
    if q_segments is None:  # no mask, or a key padding mask shared by every chunk
        bias = None if allowed is None else _key_bias(allowed)
        one_chunk = lambda i, q_i: _softmax_attend(q_i, k, v, scale, bias)
    else:
        kv_segments = q_segments if kv_segments is None else kv_segments
        sp = _pad_blocks(q_segments, n, chunk_size, -1).reshape(B, n * chunk_size)

        def one_chunk(i, q_i):
            s_i = jax.lax.dynamic_slice_in_dim(sp, i * chunk_size, chunk_size, axis=1)
            allowed = (s_i[:, :, None] == kv_segments[:, None, :]) & (s_i[:, :, None] >= 0)
            return _softmax_attend(q_i, k, v, scale, _key_bias(allowed))

    return _update_slices(jax.checkpoint(one_chunk), qp, n, chunk_size, axis=1)[:, :Lq]


def row_extent(mask: jax.Array) -> jax.Array:
    """int32 scalar: 1 + the last valid row of mask [B, L] over the whole batch (0 if none valid)."""
    L = mask.shape[1]
    return jnp.max(jnp.where(mask, jnp.arange(1, L + 1, dtype=jnp.int32), 0))


def _online_softmax_init(q):
    """(m, l, acc) for q [B, H, Lq, D]: built from q, so the carry keeps q's sharding (under explicit
    sharding both branches of a cond on the carry must agree on it)."""
    acc0 = jnp.zeros_like(q, jnp.float32)
    return jnp.full_like(acc0[..., 0], _NEG), jnp.zeros_like(acc0[..., 0]), acc0


def _online_softmax_step(carry, q, k, v, allowed):
    """Fold one key block into the flash-softmax carry: q [B, H, Lq, D] (pre-scaled), k / v [B, H, Lk, D],
    allowed bool [B, Lq, Lk]."""
    m, l, acc = carry
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + _key_bias(allowed)[:, None]
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.exp(logits - m_new[..., None])
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv


def _online_softmax_result(carry, dtype):
    """The attention output [B, H, Lq, D] of a carry; a query that met no allowed key (padding) keeps
    m = _NEG (and garbage in acc / l): output 0."""
    m, l, acc = carry
    return jnp.where((m > _NEG / 2)[..., None], acc / jnp.maximum(l, 1e-30)[..., None], 0.0).astype(dtype)


def extent_limited_attention(q, k, v, segment_ids, chunk_size=128, key_block=256, scale=None):
    """Self-attention among tokens of equal segment id (q/k/v [B, L, H, D], segment_ids [B, L], -1 =
    padding) that computes nothing past the batch's *extent*: the last valid row + 1, over the batch.

    Padded voxel sets keep their valid rows as a prefix, so a sample with n of L rows valid has
    extent n (any mask is handled correctly; holes are just not skipped). Query chunks and key
    blocks at or past the extent are skipped with `lax.cond` (a real branch: the predicate is a
    batch-wide scalar), so full attention costs O(extent²) instead of O(L²); key blocks are folded
    in with an online (flash) softmax, masked by an added bias as in `_softmax_attend` (a query that
    has seen no allowed key yet carries garbage that the first allowed key's rescaling multiplies by
    exp(_NEG) = 0). Differentiable (cond and scan), each query chunk rematerialised in the backward
    pass like `query_chunked_attention`.
    """
    B, L, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cq, ck = min(chunk_size, L), min(key_block, L)
    nq, nk = -(-L // cq), -(-L // ck)
    extent = row_extent(segment_ids >= 0)
    q, k, v = (_zero_padding(t, segment_ids) for t in (q, k, v))
    heads_major = lambda t, n, c: jnp.transpose(_pad_blocks(t, n, c, 0), (1, 0, 3, 2, 4))  # [n, B, H, c, D]
    qh = jnp.swapaxes(_pad_blocks(q * jnp.asarray(scale, q.dtype), nq, cq, 0).reshape(B, nq * cq, H, D), 1, 2)  # [B, H, nq·cq, D]
    kb, vb = heads_major(k, nk, ck), heads_major(v, nk, ck)
    sqc = jnp.moveaxis(_pad_blocks(segment_ids, nq, cq, -1), 1, 0)  # [nq, B, cq]
    skb = jnp.moveaxis(_pad_blocks(segment_ids, nk, ck, -1), 1, 0)  # [nk, B, ck]

    def attend(q_i, s_i):  # q_i [B, H, cq, D] -> [B, H, cq, D]
        def key_step(carry, j):
            def update(carry):
                s_j = jax.lax.dynamic_index_in_dim(skb, j, keepdims=False)
                k_j, v_j = (jax.lax.dynamic_index_in_dim(t, j, keepdims=False) for t in (kb, vb))
                allowed = (s_i[:, :, None] == s_j[:, None, :]) & (s_i[:, :, None] >= 0)  # [B, cq, ck]
                return _online_softmax_step(carry, q_i, k_j, v_j, allowed)

            return jax.lax.cond(j * ck < extent, update, lambda c: c, carry), None

        carry, _ = jax.lax.scan(key_step, _online_softmax_init(q_i), jnp.arange(nk))
        return _online_softmax_result(carry, q_i.dtype)  # key block 0 always runs, so l >= 1 where it counts

    @jax.checkpoint
    def one_chunk(i, q_i):
        s_i = jax.lax.dynamic_index_in_dim(sqc, i, keepdims=False)
        return jax.lax.cond(i * cq < extent, attend, lambda q_i, s_i: jnp.zeros_like(q_i), q_i, s_i)

    out = _update_slices(one_chunk, qh, nq, cq, axis=2)  # [B, H, nq·cq, D]
    return jnp.swapaxes(out, 1, 2)[:, :L]


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, L, ...] with its rows reordered by index [B, L] (e.g. a layout's `perm` / `inv_perm`)."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def segment_bounds(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(start, end) int32 [B, L]: the half-open row range [start, end) of each row's run of equal
    segment ids in segment_ids [B, L] (for sorted tokens: the row's whole group)."""
    L = segment_ids.shape[1]
    rows = jnp.arange(L, dtype=jnp.int32)
    # neighbours built from segment_ids itself (so under explicit sharding every operand shares its
    # sharding); the edge rows compare against a value unequal to their own
    first = segment_ids != jnp.concatenate([segment_ids[:, :1] - 1, segment_ids[:, :-1]], axis=1)
    last = segment_ids != jnp.concatenate([segment_ids[:, 1:], segment_ids[:, -1:] + 1], axis=1)
    start = jax.lax.cummax(jnp.where(first, rows, 0), axis=1)
    end = jax.lax.cummin(jnp.where(last, rows + 1, L), axis=1, reverse=True)
    return start, end


def span_limited_segment_attention(q, k, v, segment_ids, max_group, query_block=128, key_block=64, scale=None):
    """`blocked_segment_attention` (same inputs, same result) that reads only the keys each query
    block can see: the rows from the start of its first query's group to the end of its last one's.

    That span is found per block (over the batch) and folded in `key_block` rows at a time from its
    start with an online softmax; key steps past its end are skipped with `lax.cond`, so the work
    follows the actual group sizes (~110 tokens per window for the Gaussian decoder's shell at 64³:
    ~4x less than the static 2r+1 blocks of 256 that `max_group` = 512 forces). Differentiable (cond
    and scan), each query block rematerialised in the backward pass.

    q, k and v are read where they lie, with no padded or heads-major copies (each [B, L, H, D] is the
    size of the decoder's whole residual stream): a key step's rows are sliced and transposed in the
    loop, and the query blocks' outputs are written over q in place.
    """
    B, L, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    bq, bk = min(query_block, L), min(key_block, L)
    nq = -(-L // bq)
    steps = -(-min(bq + 2 * (max_group - 1), L) // bk)  # a block's span is at most bq + 2(max_group - 1)
    # block i holds rows [start_i, start_i + bq): the last one ends at row L, overlapping its predecessor,
    # whose outputs (already written over q) it keeps
    first_new = jnp.arange(nq, dtype=jnp.int32) * bq
    starts = jnp.minimum(first_new, L - bq)
    block_rows = starts[:, None] + jnp.arange(bq, dtype=jnp.int32)  # [nq, bq]
    fresh = block_rows >= first_new[:, None]  # [nq, bq]
    seg_blocks = jnp.where(fresh, segment_ids[:, block_rows], -1)  # [B, nq, bq]
    start, end = segment_bounds(segment_ids)
    lo = jnp.min(jnp.where(seg_blocks >= 0, start[:, block_rows], L), axis=(0, 2))  # [nq] a block's first key row
    hi = jnp.max(jnp.where(seg_blocks >= 0, end[:, block_rows], 0), axis=(0, 2))  # [nq] its last key row + 1
    heads_major = lambda t: jnp.swapaxes(t, 1, 2)  # [B, n, H, D] -> [B, H, n, D]
    key_rows = jnp.arange(bk, dtype=jnp.int32)

    @jax.checkpoint  # only q/k/v are kept for the backward pass, not a block's logits
    def attend(q_i, s_i, lo_i, hi_i):  # q_i [B, bq, H, D], s_i [B, bq], key span [lo_i, hi_i) -> [B, bq, H, D]
        q_i = heads_major(_zero_padding(q_i, s_i) * jnp.asarray(scale, q.dtype))

        def key_step(carry, j):
            r0 = lo_i + j * bk

            def update(carry):
                c0 = jnp.minimum(r0, L - bk)  # a step near the end reads the last bk rows; those before r0 are done
                s_j = jax.lax.dynamic_slice_in_dim(segment_ids, c0, bk, axis=1)
                s_j = jnp.where((c0 + key_rows >= r0)[None], s_j, -1)
                k_j, v_j = (heads_major(_zero_padding(jax.lax.dynamic_slice_in_dim(t, c0, bk, axis=1), s_j)) for t in (k, v))
                allowed = (s_i[:, :, None] == s_j[:, None, :]) & (s_i[:, :, None] >= 0)
                return _online_softmax_step(carry, q_i, k_j, v_j, allowed)

            return jax.lax.cond(r0 < hi_i, update, lambda c: c, carry), None

        carry, _ = jax.lax.scan(key_step, _online_softmax_init(q_i), jnp.arange(steps))
        return jnp.swapaxes(_online_softmax_result(carry, q_i.dtype), 1, 2)

    def one_block(i, buf):  # buf: q, its rows before block i's fresh ones already replaced by their outputs
        part = jax.lax.dynamic_slice_in_dim(buf, starts[i], bq, axis=1)
        out = attend(part, jax.lax.dynamic_index_in_dim(seg_blocks, i, 1, keepdims=False), lo[i], hi[i])
        out = jnp.where(jax.lax.dynamic_index_in_dim(fresh, i, keepdims=False)[None, :, None, None], out.astype(buf.dtype), part)
        return jax.lax.dynamic_update_slice_in_dim(buf, out, starts[i], axis=1)

    return jax.lax.fori_loop(0, nq, one_block, q)


def sparse_self_attention(q, k, v, layout: AttentionLayout, *, impl: str = "xla", block_size: int = 256):
    """Self-attention of padded voxel tokens q/k/v [B, L, H, D] grouped by `layout` -> [B, L, H, D].

    Padding rows (segment -1) neither attend nor are attended to; their output is 0. In the XLA
    path `block_size` is the key block (half of it the query chunk) of full attention and the block
    of window attention (on CPU, window attention is `span_limited_segment_attention`).
    """
    if layout.kind == "full":  # perm is the identity
        return sorted_self_attention(q, k, v, layout, impl=impl, block_size=block_size)
    qs, ks, vs = (take_rows(t, layout.perm) for t in (q, k, v))
    return take_rows(sorted_self_attention(qs, ks, vs, layout, impl=impl, block_size=block_size), layout.inv_perm)


def sorted_self_attention(q, k, v, layout: AttentionLayout, *, impl: str = "xla", block_size: int = 256):
    """`sparse_self_attention` of tokens already in the layout's sorted order (rows permuted by
    `layout.perm`; for 'full' layouts that is the original order) -> [B, L, H, D] in that order.

    A caller whose surrounding ops are row-wise (the projections around attention) permutes its
    input once and its output back once, instead of gathering q, k and v and scattering the result.
    """
    if impl == "xla":
        if layout.kind == "full":  # 128 x 256 logit tiles: per-step logits stay cache-sized at batch 16
            return extent_limited_attention(q, k, v, layout.segment_ids, max(block_size // 2, 1), block_size)
        # CPU runs its real branches (lax.cond), so it skips the keys outside each block's groups;
        # elsewhere the static 2r+1-block neighbourhoods, with no control flow, stay the faster form.
        return jax.lax.platform_dependent(
            q, k, v, layout.segment_ids,
            cpu=lambda *a: span_limited_segment_attention(*a, layout.max_group),
            default=lambda *a: blocked_segment_attention(*a, layout.max_group, block_size))
    if impl == "pallas":
        from kernels.block_sparse_attention import block_sparse_attention

        return block_sparse_attention(q, k, v, layout.segment_ids, max_group=layout.max_group)
    raise ValueError(f"unknown attention impl {impl!r} (expected 'xla' or 'pallas')")


# Queries per chunk of dense attention: [B, H, 512, Lk] f32 logits per step (G_S: 96 MiB at H=12),
# used when the whole logits tensor would hold more than MAX_LOGITS elements (256 MiB in f32).
QUERY_CHUNK = 512
MAX_LOGITS = 2**26


def cross_attention(q, k, v, chunk_size: int | None = None):
    """Every query q [B, L, H, D] attends to every key of its sample k/v [B, Lk, H, D] -> [B, L, H, D]:
    the one path of cross-attention (voxel or dense-grid tokens to the condition tokens) and of dense
    self-attention (k, v from the queries' own tokens) in every network.

    `chunk_size` None: one fused product while the [B, H, L, Lk] logits hold at most MAX_LOGITS
    elements (77 text tokens), else QUERY_CHUNK queries at a time (`query_chunked_attention`: G_S's
    4096² self-attention and cross-attention to 1374 image tokens never materialise their logits).
    Padding queries get an ordinary (finite) output; mask it where the invariant needs zero padding rows."""
    if chunk_size is None:
        B, L, H, _ = q.shape
        chunk_size = QUERY_CHUNK if B * H * L * k.shape[1] > MAX_LOGITS else L
    return query_chunked_attention(q, k, v, chunk_size=chunk_size)
