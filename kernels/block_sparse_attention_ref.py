"""Pure-JAX reference of `block_sparse_attention`: the same block table, no Pallas.

Every query block gathers its `width` key blocks from the table (steps past the count masked out)
and runs a masked softmax over them, so it checks the table and the kernels' semantics with plain
XLA ops (differentiable by JAX itself). Memory is O(L·width·block), fine for tests and debugging.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.block_sparse_attention import group_block_table, table_width

_NEG = -1e30


def block_sparse_attention_ref(q, k, v, segment_ids, *, max_group: int, block_q: int = 128, block_k: int = 128,
                               scale: float | None = None):
    """q/k/v [B, L, H, D], segment_ids int32 [B, L] (sorted, contiguous groups; −1 padding) -> [B, L, H, D]."""
    B, L, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    Lp = -(-L // math.lcm(block_q, block_k)) * math.lcm(block_q, block_k)
    nq, nk = Lp // block_q, Lp // block_k
    width = table_width(block_q, block_k, max_group, nk)
    seg = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, Lp - L)), constant_values=-1)
    keep = (seg >= 0)[:, :, None, None]
    q, k, v = (jnp.where(keep, jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, 0))), 0) for x in (q, k, v))
    first, count = group_block_table(seg, block_q, block_k, width)  # [B, nq]

    steps = jnp.arange(width)
    blocks = jnp.minimum(first[..., None] + steps, nk - 1)  # [B, nq, width]
    used = steps < count[..., None]  # [B, nq, width]
    rows = (blocks[..., None] * block_k + jnp.arange(block_k)).reshape(B, nq, width * block_k)
    take = jax.vmap(lambda x, r: x[r])  # per sample: [Lp, ...] gathered at rows [nq, width·bk]
    kb, vb, sk = take(k, rows), take(v, rows), take(seg, rows)  # [B, nq, W·bk, H, D], [B, nq, W·bk]
    sk = jnp.where(jnp.repeat(used, block_k, axis=-1), sk, -1)
    qb = q.reshape(B, nq, block_q, H, D)
    sq = seg.reshape(B, nq, block_q)
    allowed = (sq[..., :, None] == sk[..., None, :]) & (sq[..., :, None] >= 0)  # [B, nq, bq, W·bk]

    logits = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(allowed[:, :, None], logits, _NEG)
    p = jnp.where(allowed[:, :, None], jnp.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).reshape(B, Lp, H, D)[:, :L]
