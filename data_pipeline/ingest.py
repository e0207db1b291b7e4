"""Ingest: load a mesh file, flatten its scene, bring it into the TRELLIS frame.

The reference imports every asset into Blender, then scales the whole scene by 1/(largest bbox
extent) and centres the bbox at the origin, so the asset fits [-0.5, 0.5]^3, z-up
(docs/reference_facts.md#asset-normalisation-and-rendering).
Blender's glTF and OBJ importers turn y-up files into z-up, `(x, y, z) -> (x, -z, y)`; PLY and STL
are imported as they are. We do the same with trimesh, keeping each sub-mesh (and its texture or
vertex colours) separate so the renderer sees the original materials.

CLI: python -m data_pipeline.ingest MESH [--up y|z] [--out normalised.glb]
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import trimesh

Y_UP_FORMATS = frozenset({"glb", "gltf", "obj"})
SUPPORTED_FORMATS = frozenset({"glb", "gltf", "obj", "ply", "stl", "off"})

# (x, y, z)_file -> (x, -z, y)_world: y-up file into the z-up world (Blender importers).
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


class AssetError(ValueError):
    """An asset that cannot go into the dataset; the message names the file and the problem."""


@dataclasses.dataclass
class Asset:
    """A normalised asset: sub-meshes in the unit-cube world frame with their visuals.

    scale, offset: world = (file_in_z_up + offset) * scale, as the reference's transforms.json.
    """

    meshes: list[trimesh.Trimesh]
    scale: float
    offset: np.ndarray
    source: str
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. missing texture files

    @property
    def num_faces(self) -> int:
        return sum(len(m.faces) for m in self.meshes)

    def geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """All triangles as one (vertices float64 [V, 3], faces int64 [F, 3]) pair."""
        verts, faces, base = [], [], 0
        for m in self.meshes:
            verts.append(np.asarray(m.vertices, np.float64))
            faces.append(np.asarray(m.faces, np.int64) + base)
            base += len(m.vertices)
        return np.concatenate(verts), np.concatenate(faces)

    def combined(self) -> trimesh.Trimesh:
        """One Trimesh (visuals merged where trimesh can), e.g. for export."""
        return trimesh.util.concatenate(self.meshes)


def _file_format(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".")


def missing_textures(path: str) -> list[str]:
    """Texture / material files an OBJ (mtllib, map_*) or a .gltf (image uris) refers to that do not exist.

    trimesh loads such assets without the texture (grey) with only a log line; the builder records
    these in the record's metadata and in warnings.jsonl instead."""
    fmt, base, refs = _file_format(path), os.path.dirname(path), []
    try:
        if fmt == "obj":
            with open(path, errors="replace") as f:
                libs = [line.split(None, 1)[1].strip() for line in f if line.startswith("mtllib") and len(line.split()) > 1]
            for lib in libs:
                lib_path = os.path.join(base, lib)
                refs.append(lib_path)
                if os.path.isfile(lib_path):
                    with open(lib_path, errors="replace") as f:
                        refs += [os.path.join(os.path.dirname(lib_path), line.split()[-1]) for line in f
                                 if line.strip().lower().startswith(("map_", "bump", "disp", "norm")) and len(line.split()) > 1]
        elif fmt == "gltf":
            import json

            with open(path) as f:
                doc = json.load(f)
            refs = [os.path.join(base, im["uri"]) for im in doc.get("images", [])
                    if isinstance(im.get("uri"), str) and not im["uri"].startswith("data:")]
    except (OSError, ValueError):
        return []  # the loader reports an unreadable file itself
    return [f"missing texture/material file {r}" for r in dict.fromkeys(refs) if not os.path.isfile(r)]


def load_meshes(path: str) -> list[trimesh.Trimesh]:
    """Every triangle mesh of the file in its scene's world frame (transforms applied), visuals kept."""
    fmt = _file_format(path)
    if fmt not in SUPPORTED_FORMATS:
        raise AssetError(f"{path}: unsupported mesh format {fmt!r} (supported: {sorted(SUPPORTED_FORMATS)})")
    if not os.path.isfile(path):
        raise AssetError(f"{path}: file not found")
    try:
        loaded = trimesh.load(path, force="scene", process=False)
    except Exception as e:  # trimesh raises many types on bad files
        raise AssetError(f"{path}: unreadable mesh file ({type(e).__name__}: {e})") from e
    meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        raise AssetError(f"{path}: empty mesh (no triangles)")
    return meshes


def normalise(meshes: list[trimesh.Trimesh], source: str = "<memory>", up: str = "z") -> Asset:
    """Rotate y-up to z-up if asked, scale by 1/largest extent and centre the bbox at the origin."""
    if up not in ("y", "z"):
        raise AssetError(f"{source}: up axis must be 'y' or 'z', got {up!r}")
    out = []
    for m in meshes:
        m = m.copy()
        if up == "y":
            m.apply_transform(Y_UP_TO_Z_UP)
        out.append(m)
    verts = np.concatenate([np.asarray(m.vertices) for m in out])
    if not np.all(np.isfinite(verts)):
        raise AssetError(f"{source}: non-finite (NaN/inf) vertex coordinates")
    lo, hi = verts.min(0), verts.max(0)
    extent = float(np.max(hi - lo))
    if not extent > 1e-12:
        raise AssetError(f"{source}: degenerate mesh (zero bounding-box extent)")
    scale = 1.0 / extent
    offset = -(lo + hi) / 2.0
    transform = np.eye(4)
    transform[:3, :3] *= scale
    transform[:3, 3] = offset * scale
    for m in out:
        m.apply_transform(transform)
    return Asset(meshes=out, scale=scale, offset=offset, source=source)


def ingest(path: str, up: str | None = None) -> Asset:
    """Load and normalise one asset file. `up=None` follows the Blender importer of its format."""
    if up is None:
        up = "y" if _file_format(path) in Y_UP_FORMATS else "z"
    asset = normalise(load_meshes(path), source=path, up=up)
    asset.warnings = missing_textures(path)
    return asset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mesh")
    p.add_argument("--up", choices=["y", "z"], default=None, help="file's up axis (default: by format)")
    p.add_argument("--out", default=None, help="write the normalised mesh here (any trimesh format)")
    args = p.parse_args(argv)
    asset = ingest(args.mesh, args.up)
    v, f = asset.geometry()
    print(f"{args.mesh}: {len(asset.meshes)} meshes, {len(v)} vertices, {len(f)} faces, "
          f"scale {asset.scale:.6g}, bbox {v.min(0).round(4).tolist()} .. {v.max(0).round(4).tolist()}")
    if args.out:
        trimesh.Scene(asset.meshes).export(args.out)


if __name__ == "__main__":
    main()
