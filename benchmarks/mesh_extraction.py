"""FlexiCubes mesh extraction time on a decoder-like sparse 256³ shell (one sample, fp32).

    python benchmarks/mesh_extraction.py [--cubes 65536] [--runs 3] [--grad]

The active cubes are the 256³ voxels within ±2 voxels of a sphere sized to give about `--cubes` of
them (a decoded SLAT is such a shell, 64 fine cubes per 64³ voxel), with the sphere's sdf at the
corners, random deformations and weights. Prints the compile time, the median extraction time
(and, with `--grad`, forward+backward w.r.t. the features), the surface cubes, vertices and faces.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trellis_jax.representations.mesh import extract_mesh
from trellis_jax.representations.mesh.cube_tables import CORNERS
from trellis_jax.sparse.tensor import SparseTensor
from timing import time_calls

RES = 256


def shell(target: int, seed: int = 0) -> SparseTensor:
    radius = np.sqrt(target / (4 * np.pi * 4)) / RES  # area · thickness (4 voxels) ≈ target
    lo, hi = int((0.5 - radius) * RES) - 3, int((0.5 + radius) * RES) + 3
    ax = np.arange(max(lo, 0), min(hi, RES))
    idx = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm((idx + 0.5) / RES - 0.5, axis=-1) - radius
    coords = idx[np.abs(d) < 2 / RES]
    corners = (coords[:, None] + CORNERS[None]) / RES - 0.5
    sdf = np.linalg.norm(corners, axis=-1) - radius + 1 / RES
    rng = np.random.default_rng(seed)
    feats = np.concatenate([sdf, 0.3 * rng.normal(size=(len(coords), 24)), 0.5 * rng.normal(size=(len(coords), 21)),
                            rng.normal(size=(len(coords), 48))], -1).astype(np.float32)
    return SparseTensor(jnp.asarray(coords[None], jnp.int32), jnp.asarray(feats[None]), jnp.ones((1, len(coords)), bool), RES)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cubes", type=int, default=65536)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--grad", action="store_true")
    args = p.parse_args()
    st = shell(args.cubes)
    timing = time_calls(lambda _: extract_mesh(st), args.runs)
    mesh = timing.result
    print(f"mesh_extraction: backend={jax.default_backend()} active_cubes={st.capacity} "
          f"candidate_cubes={int(mesh.required[0, 0])} vertices={int(mesh.num_vertices[0])} faces={int(mesh.num_faces[0])} "
          f"overflow={bool(mesh.overflow[0])} first_call_s={timing.first_s:.2f} extract_s={timing.median_s:.3f}")
    if args.grad:
        loss = jax.jit(jax.grad(lambda f, s: jnp.sum(extract_mesh(s.replace(feats=f)).vertices)))
        jax.block_until_ready(loss(st.feats, st))
        t0 = time.perf_counter()
        jax.block_until_ready(loss(st.feats, st))
        print(f"mesh_extraction: fwd+bwd_s={time.perf_counter() - t0:.3f}")


if __name__ == "__main__":
    main()
