"""A built-in dataset that needs no dataset download.

1. Procedural assets: coloured trimesh primitives (vertex colours) and two-part compositions, each with
   a caption ("a red box on a blue cylinder"), plus textured ones (a checker-textured box or sphere,
   exported as GLB so the texture path through ingest/render is exercised). Written as PLY (z-up,
   vertex colours) or GLB (y-up, as glTF requires; ingest turns it back to z-up).
2. Real meshes shipped inside the pybullet wheel (`pybullet_data/`: textured duck, soccer ball,
   torus, tray, jenga block; bunny, lego brick, mug; ~1000 small `random_urdfs` objects). pybullet has
   no binary wheel for Python 3.12, so the wheel is fetched with
   `pip download --python-version 3.11 --only-binary=:all: --no-deps pybullet` on first use and only
   the mesh files are unzipped into a cache directory (`$TRELLIS_JAX_CACHE` or ~/.cache/trellis_jax).
   `pybullet_data_dir()` returns None when that is impossible (offline), so callers can skip.

CLI: python -m data_pipeline.builtin --out DIR [--procedural 16] [--pybullet 0] [--random-urdfs 0]
writes DIR/meshes/* and DIR/manifest.json (feed it to `python -m data_pipeline.build`).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import trimesh

from data_pipeline.config import write_manifest
from data_pipeline.ingest import Y_UP_TO_Z_UP

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "orange": (240, 140, 30), "purple": (140, 60, 190), "white": (235, 235, 235), "black": (30, 30, 30),
    "pink": (240, 130, 180), "brown": (130, 80, 40), "grey": (128, 128, 128), "cyan": (40, 200, 210),
}
SHAPES = ("box", "cylinder", "sphere", "cone", "capsule", "torus")


def primitive(shape: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """One primitive, z-up, random proportions, resting on z = 0."""
    if shape == "box":
        m = trimesh.creation.box(extents=rng.uniform(0.4, 1.0, 3))
    elif shape == "cylinder":
        m = trimesh.creation.cylinder(radius=rng.uniform(0.2, 0.5), height=rng.uniform(0.3, 1.0), sections=32)
    elif shape == "sphere":
        m = trimesh.creation.icosphere(subdivisions=3, radius=rng.uniform(0.3, 0.5))
    elif shape == "cone":
        m = trimesh.creation.cone(radius=rng.uniform(0.25, 0.5), height=rng.uniform(0.4, 1.0), sections=32)
    elif shape == "capsule":
        m = trimesh.creation.capsule(height=rng.uniform(0.3, 0.8), radius=rng.uniform(0.15, 0.3), count=[16, 16])
    elif shape == "torus":
        m = trimesh.creation.torus(major_radius=rng.uniform(0.3, 0.45), minor_radius=rng.uniform(0.08, 0.15),
                                   major_sections=32, minor_sections=16)
    else:
        raise ValueError(f"unknown primitive {shape!r}")
    m.apply_translation([0.0, 0.0, -m.bounds[0, 2]])
    return m


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _paint(m: trimesh.Trimesh, colour: str) -> trimesh.Trimesh:
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.array(COLOURS[colour] + (255,), np.uint8))
    return m


def _checker_texture(colour_a: str, colour_b: str, n: int = 8, px: int = 16) -> np.ndarray:
    ij = (np.arange(n * px)[:, None] // px + np.arange(n * px)[None] // px) % 2
    return np.where(ij[..., None] == 0, COLOURS[colour_a], COLOURS[colour_b]).astype(np.uint8)


def procedural_asset(index: int, seed: int = 0) -> tuple[trimesh.Scene | trimesh.Trimesh, str, str]:
    """(mesh or scene, caption, file extension) of procedural asset `index` (deterministic)."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    names = list(COLOURS)
    kind = index % 4
    if kind == 3:  # textured: checker box/sphere via UVs, stored as GLB
        a, b = rng.choice(names, 2, replace=False)
        shape = ("box", "sphere")[index // 4 % 2]
        if shape == "box":
            m = trimesh.creation.box(extents=rng.uniform(0.5, 1.0, 3))
            m = m.subdivide()
            uv = (m.vertices[:, :2] - m.vertices[:, :2].min(0)) / np.ptp(m.vertices[:, :2], 0)
        else:
            m = trimesh.creation.uv_sphere(radius=0.5, count=[24, 24])
            d = m.vertices / np.linalg.norm(m.vertices, axis=1, keepdims=True)
            uv = np.stack([(np.arctan2(d[:, 1], d[:, 0]) / (2 * np.pi)) % 1.0, np.arccos(np.clip(d[:, 2], -1, 1)) / np.pi], 1)
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(_checker_texture(a, b)))
        m.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        return m, f"a {shape} with a {a} and {b} checkerboard pattern", "glb"
    if kind in (0, 1):  # a single coloured primitive
        shape = SHAPES[(index // 4 + kind * 3) % len(SHAPES)]
        colour = names[rng.integers(len(names))]
        return _paint(primitive(shape, rng), colour), f"{_a(colour)} {shape}", "ply"
    # a composition: A on top of B
    (sa, sb), (ca, cb) = rng.choice(SHAPES, 2), rng.choice(names, 2, replace=False)
    bottom = _paint(primitive(sb, rng), cb)
    top = _paint(primitive(sa, rng), ca)
    top.apply_translation([0.0, 0.0, bottom.bounds[1, 2]])
    return trimesh.util.concatenate([top, bottom]), f"{_a(ca)} {sa} on {_a(cb)} {sb}", "ply"


def write_procedural(out_dir: str, count: int, seed: int = 0) -> list[dict]:
    """Write `count` procedural assets into out_dir -> manifest entries."""
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for i in range(count):
        mesh, caption, ext = procedural_asset(i, seed)
        path = os.path.join(out_dir, f"procedural_{i:04d}.{ext}")
        if ext == "glb":  # glTF is y-up: store the z-up asset so that ingest's y->z turn restores it
            mesh = mesh.copy()
            mesh.apply_transform(np.linalg.inv(Y_UP_TO_Z_UP))
        mesh.export(path)
        entries.append({"id": f"procedural_{i:04d}", "path": path, "captions": [caption]})
    return entries


# ------------------------------------------------------------------------------------------- pybullet
PYBULLET_ASSETS = {  # id -> (path inside pybullet_data, caption)
    "pybullet_duck": ("duck.obj", "a yellow rubber duck"),
    "pybullet_soccerball": ("soccerball.obj", "a black and white soccer ball"),
    "pybullet_torus": ("torus/torus_textured.obj", "a textured torus"),
    "pybullet_tray": ("tray/tray_textured.obj", "a shallow tray"),
    "pybullet_jenga": ("jenga/jenga.obj", "a wooden jenga block"),
    "pybullet_bunny": ("bunny.obj", "the stanford bunny"),
    "pybullet_lego": ("lego/lego.obj", "a lego brick"),
    "pybullet_mug": ("urdf/mug.obj", "a coffee mug"),
}
_EXTRACT_DIRS = ("torus/", "tray/", "jenga/", "lego/", "urdf/", "random_urdfs/")
_MAX_TOP_LEVEL_FILE = 4 << 20


def cache_dir() -> str:
    return os.environ.get("TRELLIS_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "trellis_jax"))


def pybullet_data_dir(download: bool = True) -> str | None:
    """Path of the cached `pybullet_data/` meshes, fetching them on first use; None if unavailable."""
    target = os.path.join(cache_dir(), "pybullet_data")
    if os.path.exists(os.path.join(target, ".complete")):
        return target
    if not download:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--python-version", "3.11",
               "--only-binary=:all:", "pybullet", "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            return None
        wheels = glob.glob(os.path.join(tmp, "pybullet-*.whl"))
        if not wheels:
            return None
        os.makedirs(os.path.dirname(target), exist_ok=True)
        unzip = tempfile.mkdtemp(prefix=".pybullet_data.partial-", dir=os.path.dirname(target))  # unique per run
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                for info in z.infolist():
                    name = info.filename
                    if not name.startswith("pybullet_data/") or info.is_dir():
                        continue
                    rel = name[len("pybullet_data/"):]
                    top_level = "/" not in rel
                    if (top_level and info.file_size <= _MAX_TOP_LEVEL_FILE) or rel.startswith(_EXTRACT_DIRS):
                        z.extract(info, unzip)
            try:
                os.replace(os.path.join(unzip, "pybullet_data"), target)
            except OSError:  # another process installed it meanwhile
                if not os.path.exists(os.path.join(target, ".complete")):
                    raise
                return target
        finally:
            shutil.rmtree(unzip, ignore_errors=True)
        open(os.path.join(target, ".complete"), "w").close()
    return target


def pybullet_entries(count: int | None = None, random_urdfs: int = 0, download: bool = True) -> list[dict]:
    """Manifest entries for the curated pybullet meshes (+ the first `random_urdfs` random objects)."""
    root = pybullet_data_dir(download)
    if root is None:
        return []
    entries = []
    for asset_id, (rel, caption) in PYBULLET_ASSETS.items():
        path = os.path.join(root, rel)
        if os.path.exists(path):
            entries.append({"id": asset_id, "path": path, "captions": [caption]})
    entries = entries[:count] if count is not None else entries
    for i in range(random_urdfs):
        path = os.path.join(root, "random_urdfs", f"{i:03d}", f"{i:03d}.obj")
        if os.path.exists(path):
            entries.append({"id": f"pybullet_random_{i:03d}", "path": path, "captions": ["a small random object"]})
    return entries


def write_builtin(out: str, procedural: int = 16, pybullet: int | None = 0, random_urdfs: int = 0,
                  seed: int = 0) -> str:
    """Materialise the built-in dataset under `out`; returns the manifest path."""
    entries = write_procedural(os.path.join(out, "meshes"), procedural, seed)
    if pybullet or random_urdfs:
        entries += pybullet_entries(pybullet, random_urdfs)
    path = os.path.join(out, "manifest.json")
    write_manifest(path, entries)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--procedural", type=int, default=16)
    p.add_argument("--pybullet", type=int, default=0, help="curated pybullet meshes (max %d)" % len(PYBULLET_ASSETS))
    p.add_argument("--random-urdfs", type=int, default=0, help="also this many pybullet random_urdfs objects")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = write_builtin(args.out, args.procedural, args.pybullet, args.random_urdfs, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    main()
