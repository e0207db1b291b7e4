"""Renderer times: the Gaussian splatter and the mesh rasteriser, forward and forward+backward, one view.

    python benchmarks/renderers.py [--resolution 512] [--gaussians 640000] [--faces 200000] [--runs 3]
                                   [--tile-size 4] [--tile-capacity 256] [--skip gaussians|mesh]

Gaussians: `--gaussians` of them (a decoded SLAT has 32 per active voxel, ~20K voxels: 640K) spread over
a 0.4-radius sphere shell, scale 0.004 (a few pixels at 512²). Mesh: an icosphere of radius 0.45 with the
subdivision level nearest `--faces` triangles (20·4^s: 200K asks for 327,680). Both seen from the turntable's first camera (radius 2, FoV 40°). The loss
for backward is a weighted sum of the rendered colour (and, for the mesh, antialiased colour +
depth). Prints compile time and the median of `--runs` timed runs (block_until_ready).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import trimesh

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trellis_jax.render import mesh_raster
from trellis_jax.render.gaussian_splatting import render_gaussians
from trellis_jax.render.turntable import turntable_cameras
from timing import time_calls


def bench_gaussians(n, res, runs, E, K):
    rng = np.random.default_rng(0)
    d = rng.normal(size=(n, 3))
    means = 0.4 * d / np.linalg.norm(d, axis=-1, keepdims=True) + 0.01 * rng.normal(size=(n, 3))
    args = [jnp.asarray(means, jnp.float32), jnp.asarray(rng.uniform(0, 1, (n, 3)), jnp.float32),
            jnp.full((n,), 0.8), jnp.full((n, 3), 0.004), jnp.tile(jnp.array([1.0, 0, 0, 0]), (n, 1)), jnp.ones(n, bool)]
    cam = (jnp.asarray(E), jnp.asarray(K), jnp.zeros(3))
    weights = jnp.asarray(rng.uniform(size=(res, res, 3)), jnp.float32)

    def fwd(*a):
        return render_gaussians(*a, *cam, height=res, width=res)[0]

    def loss(means, colors, opac, scales, rot, valid):
        return jnp.sum(fwd(means, colors, opac, scales, rot, valid) * weights)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    for name, fn in (("forward", jax.jit(fwd)), ("forward+backward", grad)):
        timing = time_calls(lambda _: fn(*args), runs)
        c, t = timing.first_s, timing.median_s
        print(f"gaussians {name}: n={n} res={res}² compile={c:.1f}s median={t * 1000:.0f}ms", flush=True)


def bench_mesh(faces_target, res, runs, E, K, tile_size, tile_capacity):
    subdivisions = max(0, int(np.ceil(np.log(faces_target / 20) / np.log(4) - 0.5)))  # 20·4^s faces, nearest
    m = trimesh.creation.icosphere(subdivisions, radius=0.45)
    v = jnp.asarray(m.vertices, jnp.float32)
    f = jnp.asarray(m.faces, jnp.int32)
    fm = jnp.ones(len(m.faces), bool)
    rng = np.random.default_rng(0)
    col = jnp.asarray(rng.uniform(size=(len(m.vertices), 3)), jnp.float32)
    cam = (jnp.asarray(E)[None], jnp.asarray(K)[None])
    weights = jnp.asarray(rng.uniform(size=(1, res, res, 3)), jnp.float32)
    kw = dict(height=res, width=res, near=1.0, far=100.0, tile_size=tile_size, tile_capacity=tile_capacity)

    def fwd(v, col):
        ras = mesh_raster.rasterize_mesh(v, f, fm, *cam, **kw)
        img = mesh_raster.antialias(mesh_raster.interpolate(col, ras, f), ras, f)
        return img, ras.depth, ras.overflow, ras.tile_load

    def loss(v, col):
        img, depth, _, _ = fwd(v, col)
        return jnp.sum(img * weights) + jnp.sum(depth)

    _, _, overflow, load = jax.jit(fwd)(v, col)
    overflow, load = bool(overflow[0]), np.asarray(load[0]).tolist()
    for name, fn in (("forward", jax.jit(fwd)), ("forward+backward", jax.jit(jax.grad(loss, argnums=(0, 1))))):
        timing = time_calls(lambda _: fn(v, col), runs)
        c, t = timing.first_s, timing.median_s
        print(f"mesh {name}: faces={len(m.faces)} res={res}² tile={tile_size}² tile_capacity={tile_capacity} overflow={overflow} needed(tile, bins)={load} "
              f"compile={c:.1f}s median={t * 1000:.0f}ms", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--gaussians", type=int, default=640_000)
    p.add_argument("--faces", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=4)
    p.add_argument("--tile-capacity", type=int, default=256)
    p.add_argument("--skip", choices=["gaussians", "mesh"], default=None)
    args = p.parse_args()
    ext, intr = turntable_cameras(1)
    print(f"renderers: backend={jax.default_backend()} devices={jax.devices()}", flush=True)
    if args.skip != "gaussians":
        bench_gaussians(args.gaussians, args.resolution, args.runs, ext[0], intr[0])
    if args.skip != "mesh":
        bench_mesh(args.faces, args.resolution, args.runs, ext[0], intr[0], args.tile_size, args.tile_capacity)


if __name__ == "__main__":
    main()
