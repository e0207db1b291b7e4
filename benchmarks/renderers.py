"""Renderer times: the Gaussian splatter, the mesh rasteriser and the radiance-field volume renderer,
forward and forward+backward, one view.

    python benchmarks/renderers.py [--resolution 512] [--gaussians 640000] [--faces 200000] [--runs 3]
                                   [--tile-size 4] [--tile-capacity 256] [--field-voxels 20000]
                                   [--sample-capacity 256] [--skip gaussians|mesh|radiance_field|glb ...]
                                   [--glb-faces 200000] [--glb-gaussians 100000] [--texture-size 1024]
                                   [--bake-views 100] [--bake-resolution 512] [--bake-steps 2500]

Gaussians: `--gaussians` of them (a decoded SLAT has 32 per active voxel, ~20K voxels: 640K) spread over
a 0.4-radius sphere shell, scale 0.004 (a few pixels at 512²). Mesh: an icosphere of radius 0.45 with the
subdivision level nearest `--faces` triangles (20·4^s: 200K asks for 327,680). Radiance field: the
`--field-voxels` 64³ voxels nearest a 0.4-radius sphere (rank 16, 8 samples per axis, random factors,
opaque enough that most rays stop inside the shell), `--sample-capacity` occupied samples per ray. All
seen from the turntable's first camera (radius 2, FoV 40°). The loss for backward is a weighted sum of
the rendered colour (and, for the mesh, antialiased colour + depth; for the field, depth). Prints compile time and the median of `--runs` timed runs (block_until_ready).
GLB: `api.to_glb` of one asset (an icosphere of `--glb-faces` triangles squashed to half height, with
`--glb-gaussians` Gaussians on its surface), wall-clock per bake mode ('fast', 'opt'), compiles included:
the time a user waits per asset at the reference's settings (simplify 0.95, the flags' defaults).
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
from trellis_jax.render.radiance_field import render_radiance_field
from trellis_jax.representations.strivec import Strivec
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
    r = jax.jit(lambda *a: render_gaussians(*a, *cam, height=res, width=res))(*args)
    print(f"gaussians tiles: overflow={bool(r.overflow)} most per tile={int(r.load[0])} pairs={int(r.load[1])}", flush=True)
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


def bench_radiance_field(n_voxels, res, runs, E, K, sample_capacity):
    grid = 64
    c = (np.stack(np.meshgrid(*[np.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / grid - 0.5
    shell = np.argsort(np.abs(np.linalg.norm(c, axis=-1) - 0.4))[:n_voxels]
    rng = np.random.default_rng(0)
    L, R, D = len(shell), 16, 8
    field = Strivec(jnp.asarray(c[shell] + 0.5, jnp.float32),
                    jnp.asarray(1 + 0.2 * rng.standard_normal((L, R, 3, D)), jnp.float32),
                    jnp.asarray(rng.uniform(0, 40, (L, R)), jnp.float32),
                    jnp.asarray(rng.standard_normal((L, R, 1, 3)), jnp.float32), jnp.ones(L, bool), grid)
    cam = (jnp.asarray(E), jnp.asarray(K), jnp.zeros(3))
    weights = jnp.asarray(rng.uniform(size=(res, res, 3)), jnp.float32)
    kw = dict(height=res, width=res, sample_capacity=sample_capacity)

    def fwd(field):
        return render_radiance_field(field, *cam, **kw)

    def loss(trivec, density, fdc):
        o = fwd(field.replace(trivec=trivec, density=density, features_dc=fdc))
        return jnp.sum(o.rgb * weights) + jnp.sum(o.depth)

    out = jax.jit(fwd)(field)
    info = f"voxels={L} res={res}² sample_capacity={sample_capacity} overflow={bool(out.overflow)} needed={int(out.max_samples)} " \
           f"mean_alpha={float(out.alpha.mean()):.3f}"
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    for name, fn, args in (("forward", jax.jit(fwd), (field,)),
                           ("forward+backward", grad, (field.trivec, field.density, field.features_dc))):
        timing = time_calls(lambda _: fn(*args), runs)
        ct, t = timing.first_s, timing.median_s
        print(f"radiance_field {name}: {info} compile={ct:.1f}s median={t * 1000:.0f}ms", flush=True)


def bench_glb(faces_target, n_gaussians, texture_size, views, resolution, steps):
    import time

    from trellis_jax.api import MeshResult, to_glb

    subdivisions = max(0, int(np.ceil(np.log(faces_target / 20) / np.log(4) - 0.5)))
    m = trimesh.creation.icosphere(subdivisions, radius=0.45)
    m.vertices[:, 2] *= 0.5
    pts, _ = trimesh.sample.sample_surface_even(m, n_gaussians, seed=0)
    rng = np.random.default_rng(0)
    n = len(pts)
    g = {"xyz": pts.astype(np.float32), "features_dc": rng.normal(0, 0.5, (n, 3)).astype(np.float32),
         "opacity": np.full(n, 0.9, np.float32), "scaling": np.full((n, 3), 0.006, np.float32),
         "rotation": np.tile(np.float32([1, 0, 0, 0]), (n, 1))}
    mesh = MeshResult(m.vertices.astype(np.float32), m.faces.astype(np.int32), np.zeros((len(m.vertices), 6), np.float32))
    for mode in ("fast", "opt"):
        t = time.perf_counter()
        asset = to_glb(g, mesh, simplify=0.95, texture_size=texture_size, mode=mode, num_views=views,
                       render_resolution=resolution, steps=steps, verbose=False)
        print(f"glb bake {mode}: faces={len(m.faces)}->{len(asset.faces)} gaussians={n} texture={texture_size}² views={views} "
              f"at {resolution}²{f' steps={steps}' if mode == 'opt' else ''} total={time.perf_counter() - t:.1f}s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--gaussians", type=int, default=640_000)
    p.add_argument("--faces", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=4)
    p.add_argument("--tile-capacity", type=int, default=256)
    p.add_argument("--field-voxels", type=int, default=20_000)
    p.add_argument("--sample-capacity", type=int, default=256)
    p.add_argument("--skip", choices=["gaussians", "mesh", "radiance_field", "glb"], action="append", default=[])
    p.add_argument("--glb-faces", type=int, default=200_000)
    p.add_argument("--glb-gaussians", type=int, default=100_000)
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--bake-views", type=int, default=100)
    p.add_argument("--bake-resolution", type=int, default=512)
    p.add_argument("--bake-steps", type=int, default=2500)
    args = p.parse_args()
    ext, intr = turntable_cameras(1)
    print(f"renderers: backend={jax.default_backend()} devices={jax.devices()}", flush=True)
    if "gaussians" not in args.skip:
        bench_gaussians(args.gaussians, args.resolution, args.runs, ext[0], intr[0])
    if "mesh" not in args.skip:
        bench_mesh(args.faces, args.resolution, args.runs, ext[0], intr[0], args.tile_size, args.tile_capacity)
    if "radiance_field" not in args.skip:
        bench_radiance_field(args.field_voxels, args.resolution, args.runs, ext[0], intr[0], args.sample_capacity)
    if "glb" not in args.skip:
        bench_glb(args.glb_faces, args.glb_gaussians, args.texture_size, args.bake_views, args.bake_resolution, args.bake_steps)


if __name__ == "__main__":
    main()
