"""SparseTensor: a batch of voxel sets padded to a static per-sample capacity.

The reference stores a batch as one packed list of rows `coords [N, 4] = (batch, x, y, z)`,
`feats [N, C]`, with each sample's rows contiguous. Under `jit` every shape must be static, so
here each sample owns a fixed number of rows (the *capacity* L) and a validity mask:

    coords  int32 [B, L, 3]   voxel index (x, y, z) on the grid of `resolution`
    feats   any   [B, L, C]   per-voxel features
    mask    bool  [B, L]      True for real voxels

Invariant: the valid rows of a sample are a prefix (rows 0..n_b-1), in the reference's row order.
Padding rows have zero coords and zero feats. Every op in `trellis_jax.sparse` keeps padding out of
valid outputs and out of gradients. The packed layout round-trips exactly (`from_packed` /
`to_packed`), and a set larger than the capacity raises `CapacityError` instead of being truncated.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class CapacityError(ValueError):
    """A voxel set does not fit the static capacity it was asked to fit in."""


@struct.dataclass
class SparseTensor:
    """Padded batch of sparse voxel sets (see module docstring for shapes)."""

    coords: jax.Array
    feats: jax.Array
    mask: jax.Array
    resolution: int = struct.field(pytree_node=False, default=64)

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self.coords.shape[0]

    @property
    def capacity(self) -> int:
        return self.coords.shape[1]

    @property
    def num_channels(self) -> int:
        return self.feats.shape[-1]

    @property
    def dtype(self):
        return self.feats.dtype

    def counts(self) -> jax.Array:
        """Number of valid voxels per sample, int32 [B]."""
        return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)

    # ------------------------------------------------------------------ feature updates
    def replace_feats(self, feats: jax.Array) -> "SparseTensor":
        """Same voxels, new features [B, L, C']; padding rows are zeroed."""
        if feats.shape[:2] != self.mask.shape:
            raise ValueError(f"feats leading shape {feats.shape[:2]} != mask shape {self.mask.shape}")
        return self.replace(feats=masked(feats, self.mask))

    def astype(self, dtype) -> "SparseTensor":
        return self.replace(feats=self.feats.astype(dtype))

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_packed(
        cls,
        coords: np.ndarray,
        feats: np.ndarray,
        *,
        capacity: int,
        batch_size: int | None = None,
        resolution: int = 64,
    ) -> "SparseTensor":
        """Build from the reference layout: coords int [N, 4] (batch, x, y, z), feats [N, C].

        Rows must be grouped by batch index in increasing order, as in the reference. Runs on the
        host (numpy); raises `CapacityError` naming the sample when one exceeds `capacity`.
        """
        coords = np.asarray(coords)
        feats = np.asarray(feats)
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"packed coords must be [N, 4] (batch, x, y, z), got {coords.shape}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"coords has {coords.shape[0]} rows but feats has {feats.shape[0]}")
        batch_index = coords[:, 0].astype(np.int64)
        if len(batch_index) and np.any(np.diff(batch_index) < 0):
            raise ValueError("packed rows must be grouped by batch index in increasing order")
        if len(batch_index) and batch_index.min() < 0:
            raise ValueError("negative batch index in packed coords")
        xyz = coords[:, 1:]
        if len(xyz) and (xyz.min() < 0 or xyz.max() >= resolution):
            raise ValueError(
                f"voxel coords out of range [0, {resolution}): min {xyz.min()}, max {xyz.max()}"
            )
        if batch_size is None:
            batch_size = int(batch_index.max()) + 1 if len(batch_index) else 1
        counts = np.bincount(batch_index, minlength=batch_size)
        if len(counts) > batch_size:
            raise ValueError(f"packed coords hold batch index {len(counts) - 1} >= batch_size {batch_size}")
        if len(xyz):
            keys = ((batch_index * resolution + xyz[:, 0]) * resolution + xyz[:, 1]) * resolution + xyz[:, 2]
            uniq, first, dup_count = np.unique(keys, return_index=True, return_counts=True)
            if np.any(dup_count > 1):
                row = int(first[np.argmax(dup_count > 1)])
                raise ValueError(
                    f"sample {int(batch_index[row])} lists voxel {xyz[row].tolist()} more than once "
                    "(a voxel set holds each voxel at most once)"
                )
        over = np.nonzero(counts > capacity)[0]
        if len(over):
            b = int(over[0])
            raise CapacityError(
                f"sample {b} has {int(counts[b])} voxels, more than the capacity {capacity}"
            )
        out_coords = np.zeros((batch_size, capacity, 3), np.int32)
        out_feats = np.zeros((batch_size, capacity) + feats.shape[1:], feats.dtype)
        out_mask = np.zeros((batch_size, capacity), bool)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for b in range(batch_size):
            n = int(counts[b])
            rows = slice(int(starts[b]), int(starts[b]) + n)
            out_coords[b, :n] = xyz[rows]
            out_feats[b, :n] = feats[rows]
            out_mask[b, :n] = True
        return cls(jnp.asarray(out_coords), jnp.asarray(out_feats), jnp.asarray(out_mask), resolution)

    @classmethod
    def from_samples(
        cls,
        coords: Sequence[np.ndarray],
        feats: Sequence[np.ndarray],
        *,
        capacity: int,
        resolution: int = 64,
    ) -> "SparseTensor":
        """Build from per-sample lists: coords[b] int [n_b, 3], feats[b] [n_b, C] (n_b may be 0)."""
        if len(coords) != len(feats):
            raise ValueError(f"{len(coords)} coordinate sets but {len(feats)} feature sets")
        if not len(coords):
            raise ValueError("from_samples needs at least one sample")
        packed_coords = [
            np.concatenate([np.full((len(c), 1), b, np.int32), np.asarray(c, np.int32).reshape(-1, 3)], axis=1)
            for b, c in enumerate(coords)
        ]
        return cls.from_packed(
            np.concatenate(packed_coords, 0).reshape(-1, 4),
            np.concatenate([np.asarray(f) for f in feats], 0),
            capacity=capacity,
            batch_size=len(coords),
            resolution=resolution,
        )

    def to_packed(self) -> tuple[np.ndarray, np.ndarray]:
        """Back to the reference layout (host numpy): coords int32 [N, 4], feats [N, C]."""
        mask = np.asarray(self.mask)
        coords = np.asarray(self.coords)
        feats = np.asarray(self.feats)
        b_idx, row_idx = np.nonzero(mask)  # row-major: grouped by batch, prefix order kept
        packed_coords = np.concatenate(
            [b_idx[:, None].astype(np.int32), coords[b_idx, row_idx]], axis=1
        )
        return packed_coords, feats[b_idx, row_idx]

    def to_samples(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-sample (coords [n_b, 3], feats [n_b, C]) host arrays."""
        mask = np.asarray(self.mask)
        coords = np.asarray(self.coords)
        feats = np.asarray(self.feats)
        return (
            [coords[b][mask[b]] for b in range(mask.shape[0])],
            [feats[b][mask[b]] for b in range(mask.shape[0])],
        )


def masked(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Zero the rows of x [B, L, ...] where mask [B, L] is False."""
    m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


def compact(
    coords: jax.Array, feats: jax.Array, mask: jax.Array, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Move valid rows of one sample to the front (stable), into a new static capacity.

    coords [L, 3], feats [L, C], mask [L] -> (coords [capacity, 3], feats [capacity, C],
    mask [capacity], overflow bool []). Rows beyond the capacity are dropped *and reported* through
    `overflow`; callers surface it (see `check_overflow`). vmap over the batch.
    """
    order = jnp.argsort(~mask, stable=True)
    n = jnp.sum(mask, dtype=jnp.int32)
    L = mask.shape[0]
    if capacity <= L:
        take = order[:capacity]
    else:
        take = jnp.concatenate([order, jnp.zeros((capacity - L,), order.dtype)])
    new_mask = jnp.arange(capacity) < n
    new_coords = jnp.where(new_mask[:, None], coords[take], 0)
    new_feats = masked(feats[take], new_mask)
    return new_coords.astype(jnp.int32), new_feats, new_mask, n > capacity


def check_overflow(overflow: jax.Array, what: str = "voxel set") -> None:
    """Host-side check of an `overflow` flag [B] returned from a jitted function."""
    overflow = np.asarray(overflow)
    if overflow.any():
        bad = np.nonzero(overflow.reshape(-1))[0].tolist()
        raise CapacityError(f"{what} overflowed its static capacity for samples {bad}")
