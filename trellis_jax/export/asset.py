"""One generated asset on disk: its folder of files, written atomically, and reading its latents back.

    export_sample(out, b, DIR)    sample b of a pipeline output -> DIR/{voxels.ply, voxels.glb,
                                  gaussians.ply, preview.png, latents.npz} (assembled as DIR.partial-*)
    read_latents(DIR/latents.npz) -> coords [L,3], feats [L,C], ss_latent   (every problem names the file)

Used by `generate`, `edit`, `export` and the notebook; one writer per format lives beside it in export/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trellis_jax.atomic import atomic_directory, atomic_write


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a temp name
        np.savez(f, **arrays)


def export_sample(out: dict, b: int, directory: Path, resolution: int = 64) -> dict[str, Path]:
    """Write one sample's files into `directory` (assembled as `<directory>.partial-*`, renamed when
    complete; an existing non-empty `directory` is an error); returns the final paths."""
    from trellis_jax.export.gaussian_ply import save_gaussian_ply
    from trellis_jax.export.voxels import save_voxel_glb, save_voxel_ply
    from trellis_jax.render.preview import save_preview

    directory = Path(directory)
    mask = np.asarray(out["mask"][b])
    coords = np.asarray(out["coords"][b])[mask]
    feats = np.asarray(out["latents"][b])[mask]
    g = out["gaussian"].sample(b) if "gaussian" in out else None
    if not np.isfinite(feats).all() or (g is not None and not all(np.isfinite(np.asarray(v)).all() for v in g.values())):
        raise ValueError(f"{directory}: the latents or decoded Gaussians hold NaN/Inf values; nothing written")
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
