"""Brute-force numpy references for the sparse-core tests, written on the reference's *packed*
layout (coords [N, 4] = (batch, x, y, z), feats [N, C]) with plain loops and dict lookups, so they
share no code with `trellis_jax.sparse`.
"""
from __future__ import annotations

import math

import numpy as np


def random_packed(rng, counts, channels, resolution, dtype=np.float32):
    """Distinct random voxels per sample, rows of each sample in random (not sorted) order.

    counts: voxels per sample (0 allowed) -> coords int32 [N, 4], feats [N, C].
    """
    coords, feats = [], []
    for b, n in enumerate(counts):
        flat = rng.choice(resolution**3, size=n, replace=False)
        xyz = np.stack(np.unravel_index(flat, (resolution,) * 3), axis=-1)
        coords.append(np.concatenate([np.full((n, 1), b), xyz], axis=1))
        feats.append(rng.standard_normal((n, channels)))
    return np.concatenate(coords).astype(np.int32).reshape(-1, 4), np.concatenate(feats).astype(dtype)


def clustered_packed(rng, counts, channels, resolution, cube=6):
    """Voxels packed in a small cube per sample (many neighbours and full windows)."""
    coords, feats = [], []
    for b, n in enumerate(counts):
        lo = rng.integers(0, resolution - cube + 1, size=3)
        flat = rng.choice(cube**3, size=n, replace=False)
        xyz = np.stack(np.unravel_index(flat, (cube,) * 3), axis=-1) + lo
        coords.append(np.concatenate([np.full((n, 1), b), xyz], axis=1))
        feats.append(rng.standard_normal((n, channels)))
    return np.concatenate(coords).astype(np.int32).reshape(-1, 4), np.concatenate(feats).astype(np.float32)


def submanifold_conv(coords, feats, weight, bias):
    """spconv SubMConv3d: weight [Cout, k, k, k, Cin] (released layout), bias [Cout] -> [N, Cout]."""
    k = weight.shape[1]
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    out = np.tile(bias.astype(np.float64), (len(coords), 1))
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        for r0 in range(k):
            for r1 in range(k):
                for r2 in range(k):
                    j = index.get((b, x + r0 - k // 2, y + r1 - k // 2, z + r2 - k // 2))
                    if j is not None:
                        out[i] += weight[:, r0, r1, r2, :].astype(np.float64) @ feats[j]
    return out


def downsample(coords, feats, factor=2, include_zero=True):
    """Reference SparseDownsample: parents sorted by (b, x, y, z); each parent's value is
    Σ children / (n + 1) (torch scatter_reduce 'mean' over a zero tensor, include_self=True)
    or, with include_zero=False, Σ children / n. Returns (coords [M, 4], feats [M, C], idx [N])."""
    parent = np.concatenate([coords[:, :1], coords[:, 1:] // factor], axis=1)
    uniq, idx = np.unique(parent, axis=0, return_inverse=True)  # lexicographic (b, x, y, z)
    idx = idx.reshape(-1)
    sums = np.zeros((len(uniq), feats.shape[1]))
    counts = np.zeros(len(uniq))
    for i, p in enumerate(idx):
        sums[p] += feats[i]
        counts[p] += 1
    return uniq, sums / (counts + 1 if include_zero else counts)[:, None], idx


def window_keys(coords, window, shift):
    """The window key of every row of packed coords [N, 4], by the rule of docs/reference_facts.md#swin-windows verbatim."""
    q = coords[:, 1:].astype(np.int64) + shift
    nw = [math.ceil((int(q[:, a].max()) + 1) / window) for a in range(3)]
    w = q // window
    return coords[:, 0] * (nw[0] * nw[1] * nw[2]) + w[:, 0] * (nw[1] * nw[2]) + w[:, 1] * nw[2] + w[:, 2]


def group_attention(q, k, v, groups):
    """Softmax attention of every row only to rows with the same group id (q/k/v [N, H, D])."""
    out = np.zeros(q.shape, np.float64)
    scale = 1.0 / math.sqrt(q.shape[-1])
    for g in np.unique(groups):
        rows = np.nonzero(groups == g)[0]
        logits = np.einsum("qhd,khd->hqk", q[rows], k[rows]).astype(np.float64) * scale
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[rows] = np.einsum("hqk,khd->qhd", p, v[rows])
    return out


def attention(q, k, v):
    """Plain softmax attention q [Lq, H, D], k/v [Lk, H, D]."""
    logits = np.einsum("qhd,khd->hqk", q, k).astype(np.float64) / math.sqrt(q.shape[-1])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v)
