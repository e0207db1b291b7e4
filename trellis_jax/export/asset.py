"""One generated asset on disk: its folder of files, written atomically, and reading its latents back.

    export_sample(out, b, DIR)    sample b of a pipeline output -> DIR/{voxels.ply, voxels.glb,
                                  gaussians.ply, preview.png, mesh.glb, turntable.mp4, latents.npz}
                                  (assembled as DIR.partial-*; see `export_sample` for what needs which decoder)
    read_latents(DIR/latents.npz) -> coords [L,3], feats [L,C], ss_latent   (every problem names the file)

Used by `generate`, `edit`, `export` and the notebook; one writer per format lives beside it in export/.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from trellis_jax.atomic import atomic_directory, atomic_write


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a temp name
        np.savez(f, **arrays)


@dataclasses.dataclass(frozen=True)
class AssetOptions:
    """How the finished assets are made: the textured GLB (`api.to_glb`'s options) and the turntable video
    (the reference's orbit; 0 frames writes none)."""

    simplify: float = 0.95
    texture_size: int = 1024
    bake_mode: str = "fast"
    bake_views: int = 100
    bake_resolution: int = 512
    bake_steps: int = 2500
    video_frames: int = 120
    video_resolution: int = 512
    video_fps: int = 15

    def glb_kwargs(self) -> dict:
        """The `api.to_glb` keyword arguments these options set."""
        return dict(simplify=self.simplify, texture_size=self.texture_size, mode=self.bake_mode, num_views=self.bake_views,
                    render_resolution=self.bake_resolution, steps=self.bake_steps)

    def check(self) -> "AssetOptions":
        from trellis_jax.export.mesh_glb import BAKE_MODES

        problems = [f"--simplify must be in [0, 1), got {self.simplify}" if not 0 <= self.simplify < 1 else "",
                    f"--bake-mode must be one of {BAKE_MODES}, got {self.bake_mode!r}" if self.bake_mode not in BAKE_MODES else ""]
        problems += [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in dataclasses.asdict(self).items()
                     if k in ("texture_size", "bake_views", "bake_resolution", "bake_steps", "video_resolution", "video_fps") and v < 1]
        problems += [f"--video-frames must be >= 0, got {self.video_frames}"] if self.video_frames < 0 else []
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def add_asset_arguments(ap) -> None:
    """The `generate` / `export` flags of `AssetOptions`."""
    d = AssetOptions()
    ap.add_argument("--simplify", type=float, default=d.simplify, help="mesh.glb: fraction of faces decimated away")
    ap.add_argument("--texture-size", type=int, default=d.texture_size, help="mesh.glb: texture side in texels")
    ap.add_argument("--bake-mode", default=d.bake_mode, help="mesh.glb texture bake: 'fast' (projection) or 'opt' (Adam)")
    ap.add_argument("--bake-views", type=int, default=d.bake_views, help="Gaussian renders the texture is baked from")
    ap.add_argument("--bake-resolution", type=int, default=d.bake_resolution, help="side of those renders")
    ap.add_argument("--bake-steps", type=int, default=d.bake_steps, help="Adam steps of the 'opt' bake")
    ap.add_argument("--video-frames", type=int, default=d.video_frames, help="turntable.mp4 frames (0: no video)")
    ap.add_argument("--video-resolution", type=int, default=d.video_resolution, help="turntable.mp4 panel side")


def asset_options(args) -> AssetOptions:
    """Parsed `add_asset_arguments` flags -> checked AssetOptions (a bad value is a ValueError naming the flag)."""
    return AssetOptions(simplify=args.simplify, texture_size=args.texture_size, bake_mode=args.bake_mode,
                        bake_views=args.bake_views, bake_resolution=args.bake_resolution, bake_steps=args.bake_steps,
                        video_frames=args.video_frames, video_resolution=args.video_resolution).check()


def host_meshes(out: dict) -> list | None:
    """Every sample's extracted mesh (vertices, faces, vertex_attrs) of a pipeline output with a mesh decoder."""
    from trellis_jax.representations.mesh import extract_mesh_arrays

    return extract_mesh_arrays(out["mesh"]) if "mesh" in out else None


def export_sample(out: dict, b: int, directory: Path, resolution: int = 64, mesh=None,
                  options: AssetOptions = AssetOptions(), log=print) -> dict[str, Path]:
    """Write one sample's files into `directory` (assembled as `<directory>.partial-*`, renamed when
    complete; an existing non-empty `directory` is an error); returns the final paths.
    mesh: the sample's (vertices, faces, vertex_attrs) (`host_meshes(out)[b]`) when the pipeline decodes
    meshes. mesh.glb is textured from the Gaussians when both exist, vertex-coloured with a mesh only,
    absent without a mesh decoder (each said in the log); turntable.mp4 shows the Gaussians, the radiance
    field (when `out` has one) and the mesh."""
    import jax

    from trellis_jax.api import to_glb, MeshResult
    from trellis_jax.export.gaussian_ply import save_gaussian_ply
    from trellis_jax.export.voxels import save_voxel_glb, save_voxel_ply
    from trellis_jax.render.preview import save_preview
    from trellis_jax.render.turntable import render_turntable

    directory = Path(directory)
    mask = np.asarray(out["mask"][b])
    coords = np.asarray(out["coords"][b])[mask]
    feats = np.asarray(out["latents"][b])[mask]
    g = out["gaussian"].sample(b) if "gaussian" in out else None
    if not np.isfinite(feats).all() or (g is not None and not all(np.isfinite(np.asarray(v)).all() for v in g.values())):
        raise ValueError(f"{directory}: the latents or decoded Gaussians hold NaN/Inf values; nothing written")
    if mesh is not None and not all(np.isfinite(np.asarray(a)).all() for a in (mesh[0], mesh[2])):
        raise ValueError(f"{directory}: the decoded mesh holds NaN/Inf values; nothing written")
    names = {}
    with atomic_directory(directory) as tmp:
        save_voxel_ply(tmp / "voxels.ply", coords, resolution)
        names["voxels_ply"] = "voxels.ply"
        colors = None
        if g is not None:
            save_gaussian_ply(tmp / "gaussians.ply", g["xyz"], g["features_dc"], g["opacity"], g["scaling"], g["rotation"])
            save_preview(tmp / "preview.png", g)
            names.update(gaussians_ply="gaussians.ply", preview_png="preview.png")
            G = len(g["xyz"]) // max(len(coords), 1)
            colors = np.clip(0.2820948 * g["features_dc"].reshape(len(coords), G, 3).mean(1) + 0.5, 0, 1)
        save_voxel_glb(tmp / "voxels.glb", coords, resolution, colors)
        names["voxels_glb"] = "voxels.glb"
        if mesh is not None and len(mesh[1]) == 0:
            raise ValueError(f"{directory}: the decoded mesh is empty (no faces); nothing written")
        if mesh is not None:
            o = options
            log(f"{directory.name}: mesh.glb " + (f"textured from the Gaussians ({o.bake_mode} bake, {o.texture_size}² texture, "
                                                  f"simplify {o.simplify})" if g is not None else
                                                  "vertex-coloured (the pipeline has no Gaussian decoder to bake a texture from)"))
            glb = to_glb(g, MeshResult(*mesh), verbose=g is not None, **o.glb_kwargs())
            glb.export(tmp / "mesh.glb")
            names["mesh_glb"] = "mesh.glb"
        else:
            log(f"{directory.name}: no mesh.glb (the pipeline has no mesh decoder; voxels.glb is the coarse shape)")
        if options.video_frames > 0:
            rf = jax.tree.map(lambda x: x[b], out["radiance_field"]) if "radiance_field" in out else None
            render_turntable(tmp / "turntable.mp4", g, None if mesh is None else tuple(mesh), options.video_frames,
                             options.video_fps, options.video_resolution, radiance_field=rf)
            names["turntable_mp4"] = "turntable.mp4"
        extra = {"ss_latent": np.asarray(out["ss_latent"][b])} if "ss_latent" in out else {}
        arrays = dict(coords=coords.astype(np.uint8 if resolution <= 256 else np.int32), feats=feats, **extra)
        atomic_write(tmp / "latents.npz", lambda t: _savez(t, arrays))
        names["latents_npz"] = "latents.npz"
    return {k: directory / v for k, v in names.items()}


def read_latents(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """latents.npz (as export_sample writes it) -> (coords int32 [L, 3], feats float32 [L, C], ss_latent or None),
    every problem one error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'is a directory' if path.is_dir() else 'file not found'}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # not a zip / truncated / pickled
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    for key in ("coords", "feats"):
        if key not in arrays:
            raise ValueError(f"{path}: no '{key}' array (has {sorted(arrays)}); expected latents.npz as written by generate")
    coords, feats = arrays["coords"], arrays["feats"]
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"{path}: coords must be integer [L, 3], got {coords.dtype} {coords.shape}")
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"{path}: feats must be [L, C] with L = {coords.shape[0]} rows of coords, got {feats.shape}")
    if len(coords) == 0:
        raise ValueError(f"{path}: holds an empty voxel set")
    if not np.isfinite(feats).all():
        raise ValueError(f"{path}: feats hold {int((~np.isfinite(feats)).sum())} NaN/Inf values")
    if len(np.unique(coords, axis=0)) != len(coords):
        raise ValueError(f"{path}: coords hold duplicate voxels")
    ss = arrays.get("ss_latent")
    if ss is not None and not np.isfinite(ss).all():
        raise ValueError(f"{path}: ss_latent holds NaN/Inf values")
    return coords.astype(np.int32), feats.astype(np.float32), (None if ss is None else ss.astype(np.float32))


def check_latents_fit(path, coords: np.ndarray, feats: np.ndarray, resolution: int, channels: int) -> None:
    """The asset's voxels lie in the model's grid and its latents have the model's channel count."""
    if coords.min() < 0 or coords.max() >= resolution:
        raise ValueError(f"{path}: voxel coordinates span [{coords.min()}, {coords.max()}], outside the model's "
                         f"{resolution}^3 grid (0..{resolution - 1})")
    if feats.shape[1] != channels:
        raise ValueError(f"{path}: feats have {feats.shape[1]} channels, the model's latents have {channels}")
