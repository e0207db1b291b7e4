"""Encode: add SS latents and SLat latents (trained VAE encoders, posterior means) to a dataset.

Reads the committed shards of IN, writes new shards to OUT (never touching IN) whose records are the
input records plus
    ss_latent float32 [16, 16, 16, 8]  SparseStructureEncoder(occupancy [1,64,64,64,1]) mean, channels-last
    slat      float32 [L, 8]           SLatEncoder(SparseTensor(coords, features)) mean, rows = coords rows
(SPEC §10.5). Restartable: ids already committed in OUT are skipped.

Encoders are two callables:
    ss_encode(occupancy [B, 64, 64, 64, 1] float32) -> [B, 16, 16, 16, 8]
    slat_encode(SparseTensor feats [B, L, C]) -> [B, L, 8]
`encoders_from_modules` adapts flax modules with the project's signatures
(`SparseStructureEncoder(x) -> (z, mean, logvar)`, `SLatEncoder(st) -> (z, mean, logvar)`);
`random_encoders` gives small random stand-ins for exercising the plumbing before trained VAEs exist.

CLI: python -m data_pipeline.encode --in IN --out OUT --encoders random|module.path:factory
     (factory() -> (ss_encode, slat_encode))
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from trellis_jax.data import schema, shards
from trellis_jax.data.loaders import occupancy


def encoders_from_modules(ss_module, ss_params, slat_module, slat_params):
    """(ss_encode, slat_encode) from flax modules returning (z, mean, logvar); posterior means."""

    @jax.jit
    def ss_encode(x):
        return ss_module.apply(ss_params, x, sample_posterior=False)[1]

    @jax.jit
    def slat_encode(st):
        mean = slat_module.apply(slat_params, st, sample_posterior=False)[1]
        return mean.feats

    return ss_encode, slat_encode


def random_encoders(in_channels: int, latent_channels: int = 8, seed: int = 0):
    """Stand-ins with the real interfaces: SS = 4^3 average pool + random 1->8 projection;
    SLat = random linear C->8 on valid voxels. For pipeline tests only (not trained models)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w_ss = jax.random.normal(k1, (1, latent_channels))
    w_slat = jax.random.normal(k2, (in_channels, latent_channels)) / np.sqrt(in_channels)

    @jax.jit
    def ss_encode(x):
        B, N = x.shape[0], x.shape[1]
        pooled = x.reshape(B, N // 4, 4, N // 4, 4, N // 4, 4, 1).mean(axis=(2, 4, 6))
        return pooled @ w_ss

    @jax.jit
    def slat_encode(st):
        return jnp.where(st.mask[..., None], st.feats.astype(jnp.float32) @ w_slat, 0.0)

    return ss_encode, slat_encode


def encode_dataset(in_dir: str, out_dir: str, ss_encode, slat_encode, *, voxel_bucket: int = 1024,
                   shard_size: int | None = None, progress: bool = True, log=print) -> dict:
    """Write OUT = IN records + ss_latent + slat. Returns counts and timing."""
    from trellis_jax.sparse import SparseTensor

    if os.path.abspath(in_dir) == os.path.abspath(out_dir):
        raise ValueError("encode: --out must differ from --in (input shards are never rewritten)")
    in_paths = shards.list_shards(in_dir)
    if not in_paths:
        raise FileNotFoundError(f"encode: no committed shards under {in_dir}")
    if shard_size is None:
        shard_size = max(len(shards.shard_ids(p)) for p in in_paths)
    writer = shards.ShardWriter(out_dir, "data", shard_size)
    done = shards.committed_ids(out_dir)
    total = sum(len(shards.shard_ids(p)) for p in in_paths)
    n = 0
    t0 = time.perf_counter()
    with tqdm(total=total, desc="encode", unit="asset", disable=not progress, file=sys.stderr) as bar:
        for path in in_paths:
            for meta, arrays in shards.read_shard(path):
                bar.update(1)
                if meta["id"] in done:
                    continue
                coords = np.asarray(arrays["coords"], np.int32)
                feats = np.asarray(arrays["features"])
                res = int(meta.get("resolution", 64))
                ss = np.asarray(ss_encode(occupancy(coords, res)[None]))[0].astype(np.float32)
                L = len(coords)
                cap = max(voxel_bucket, 1 << max(L - 1, 0).bit_length())  # power-of-two buckets
                st = SparseTensor.from_samples([coords], [feats.astype(np.float32)], capacity=cap, resolution=res)
                slat = np.asarray(slat_encode(st))[0, :L].astype(np.float32)
                if not (np.all(np.isfinite(ss)) and np.all(np.isfinite(slat))):
                    raise FloatingPointError(f"encode: non-finite latent for asset {meta['id']!r} ({path})")
                writer.add(meta["id"], schema.encode(meta, {**arrays, "ss_latent": ss, "slat": slat}))
                n += 1
    writer.close()
    dt = time.perf_counter() - t0
    log(f"encode: {n} assets encoded, {len(done)} already done, {dt:.1f}s")
    return {"encoded": n, "skipped": len(done), "seconds": dt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in", dest="in_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--encoders", required=True, help="'random' or module.path:factory")
    p.add_argument("--voxel-bucket", type=int, default=1024)
    args = p.parse_args(argv)
    if args.encoders == "random":
        meta, arrays = next(shards.read_dataset(args.in_dir, fields=("features",)))
        ss_fn, slat_fn = random_encoders(arrays["features"].shape[-1])
    else:
        mod, _, fn = args.encoders.partition(":")
        ss_fn, slat_fn = getattr(importlib.import_module(mod), fn)()
    encode_dataset(args.in_dir, args.out, ss_fn, slat_fn, voxel_bucket=args.voxel_bucket)


if __name__ == "__main__":
    main()
