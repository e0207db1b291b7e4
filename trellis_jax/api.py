"""The reference's Python API over the one jitted sampler, so that a TRELLIS script ports by its imports.

    from trellis_jax.api import TrellisImageTo3DPipeline, render_video, save_ply, to_glb

    pipe = TrellisImageTo3DPipeline.from_pretrained("TRELLIS-image-large")   # pipeline.json + ckpts/
    outputs = pipe.run(image, seed=1, sparse_structure_sampler_params={"steps": 12, "cfg_strength": 7.5},
                       slat_sampler_params={"steps": 12, "cfg_strength": 3.0})
    frames = render_video(outputs["gaussian"][0])["color"]        # uint8 [120, 512, 512, 3]
    to_glb(outputs["gaussian"][0], outputs["mesh"][0]).export("sample.glb")
    save_ply(outputs["gaussian"][0], "sample.ply")

`run` returns {'gaussian': [...], 'radiance_field': [...], 'mesh': [...]} with one entry per sample, as
host arrays: Gaussians as a dict (xyz, features_dc, scaling, rotation, opacity), meshes as `MeshResult`
(vertices, faces, vertex_attrs), radiance fields as a dict of the Strivec arrays. All samples of a call
are one call of the pipeline's jitted function; each distinct sampler setting is its own (frozen)
pipeline object, kept per object so a repeated setting does not recompile.
`to_glb` bakes the texture from the Gaussians as the reference does ('fast' projection or 'opt'
optimisation); given no Gaussians it writes the vertex-coloured mesh instead.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from trellis_jax.conditioning import encode_conditions

FORMATS = ("gaussian", "radiance_field", "mesh")


class MeshResult(NamedTuple):
    """One extracted mesh on the host: vertices [V, 3] (world, z-up), faces int32 [F, 3], vertex_attrs [V, A]
    (colour RGB + normal-map RGB in [0, 1] when the decoder predicts colour)."""

    vertices: np.ndarray
    faces: np.ndarray
    vertex_attrs: np.ndarray


class _Pipeline:
    """Shared by the image and text pipelines: loading, per-setting pipeline objects, sampling, unpacking."""

    kind = ""

    def __init__(self, pipe, cond_model):
        self.pipeline, self.cond_model = pipe, cond_model
        self._variants = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, capacity: int = 32768, formats: Sequence[str] | None = None,
                        image_encoder: str | None = None, text_encoder: str | None = None, search_roots=()):
        """A pipeline directory (official layout). formats: the decoders to run (default: every one the
        directory has). Encoder weights: HF-format directories (without them a random frozen encoder,
        which the loader announces)."""
        from trellis_jax.sample import load_generator
        from trellis_jax.sampling.pipeline import DECODER_ROLES

        pipe, cond, kind = load_generator(path, capacity=capacity, image_encoder=image_encoder,
                                          text_encoder=text_encoder, search_roots=search_roots)
        if kind != cls.kind:
            raise ValueError(f"{Path(path) / 'pipeline.json'}: a {kind}-conditioned pipeline; use "
                             f"Trellis{'Image' if kind == 'image' else 'Text'}To3DPipeline")
        available = tuple(f for f in FORMATS if DECODER_ROLES[f] in pipe.models)
        chosen = tuple(formats) if formats is not None else available
        missing = [f for f in chosen if f not in available]
        if missing:
            raise ValueError(f"{Path(path) / 'pipeline.json'}: no decoder for format(s) {missing} (has {list(available)})")
        return cls(pipe.with_samplers(formats=chosen), cond)

    def _variant(self, ss_params: dict | None, slat_params: dict | None, formats, multi_image_mode=None):
        """The frozen pipeline object for these settings (built once per distinct setting)."""
        ss, slat = dict(ss_params or {}), dict(slat_params or {})
        if multi_image_mode is not None:
            ss["multi_image_mode"] = slat["multi_image_mode"] = multi_image_mode
        fmts = tuple(formats) if formats is not None else self.pipeline.formats
        unknown = [f for f in fmts if f not in self.pipeline.formats]
        if unknown:
            raise ValueError(f"format(s) {unknown} not loaded; this pipeline decodes {list(self.pipeline.formats)}")
        key = (tuple(sorted(ss.items())), tuple(sorted(slat.items())), fmts)
        if key not in self._variants:
            fields = {f.name for f in dataclasses.fields(self.pipeline.ss_sampler)}
            for name, given in (("sparse_structure_sampler_params", ss), ("slat_sampler_params", slat)):
                bad = sorted(set(given) - fields)
                if bad:
                    raise ValueError(f"{name}: unknown parameter(s) {bad} (known: {sorted(fields)})")
                if int(given.get("steps", 1)) < 1:
                    raise ValueError(f"{name}: steps must be >= 1, got {given['steps']}")
            as_tuple = lambda d: {k: (tuple(v) if k == "cfg_interval" else v) for k, v in d.items()}
            self._variants[key] = self.pipeline.with_samplers(
                dataclasses.replace(self.pipeline.ss_sampler, **as_tuple(ss)),
                dataclasses.replace(self.pipeline.slat_sampler, **as_tuple(slat)), formats=fmts)
        return self._variants[key]

    def _sample(self, cond, neg, seeds, pipe, multi_image: bool) -> dict:
        from trellis_jax.representations.mesh import extract_mesh_arrays
        from trellis_jax.sparse.tensor import CapacityError

        out = pipe.sample(cond, neg, np.asarray(seeds), multi_image=multi_image, on_error="flag")
        ok = np.asarray(out["ok"])
        if not ok.all():
            counts = np.asarray(out["num_voxels"])
            bad = [f"sample {b}: " + ("empty structure" if counts[b] == 0 else f"{counts[b]} voxels exceed the capacity "
                                      f"{pipe.capacity} (from_pretrained(..., capacity=N))") for b in np.flatnonzero(~ok)]
            raise CapacityError("; ".join(bad))
        n = len(seeds)
        result = {}
        if "gaussian" in out:
            result["gaussian"] = [out["gaussian"].sample(b) for b in range(n)]
        if "radiance_field" in out:
            rf = out["radiance_field"]
            result["radiance_field"] = [{k: np.asarray(getattr(rf, k)[b])[np.asarray(rf.mask[b])]
                                         for k in ("position", "trivec", "density", "features_dc")} for b in range(n)]
        if "mesh" in out:
            result["mesh"] = [MeshResult(*m) for m in extract_mesh_arrays(out["mesh"])]
        for fmt, items in result.items():
            for b, item in enumerate(items):
                arrays = item.values() if isinstance(item, dict) else item
                if not all(np.isfinite(np.asarray(a)).all() for a in arrays if np.issubdtype(np.asarray(a).dtype, np.floating)):
                    raise FloatingPointError(f"sample {b}: the decoded {fmt} holds NaN/Inf values")
        return result

    @staticmethod
    def _seeds(seed: int, num_samples: int) -> list[int]:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        return [int(seed) + i for i in range(num_samples)]


class TrellisImageTo3DPipeline(_Pipeline):
    """Image -> 3D assets (DINOv2 condition)."""

    kind = "image"

    def _images(self, images) -> list:
        from PIL import Image

        from trellis_jax.sample import read_image

        return [read_image(im) if isinstance(im, (str, Path)) else im if isinstance(im, Image.Image)
                else Image.fromarray(np.asarray(im)) for im in images]

    def run(self, image, num_samples: int = 1, seed: int = 42, sparse_structure_sampler_params: dict | None = None,
            slat_sampler_params: dict | None = None, formats: Sequence[str] | None = None) -> dict:
        """One image (PIL, array or path) -> `num_samples` assets with seeds seed, seed+1, ... (one jitted call).
        RGBA images are cropped around their alpha as the reference's preprocessing does."""
        pipe = self._variant(sparse_structure_sampler_params, slat_sampler_params, formats)
        seeds = self._seeds(seed, num_samples)
        cond, neg = encode_conditions(self.cond_model, self._images([image]), copies=len(seeds))
        return self._sample(cond, neg, seeds, pipe, multi_image=False)

    def run_multi_image(self, images: Sequence, num_samples: int = 1, seed: int = 42,
                        sparse_structure_sampler_params: dict | None = None, slat_sampler_params: dict | None = None,
                        formats: Sequence[str] | None = None, mode: str = "stochastic") -> dict:
        """Several views of ONE object -> assets conditioned on all of them ('stochastic' or 'multidiffusion')."""
        if mode not in ("stochastic", "multidiffusion"):
            raise ValueError(f"mode must be 'stochastic' or 'multidiffusion', got {mode!r}")
        if len(images) < 1:
            raise ValueError("run_multi_image needs at least one image")
        pipe = self._variant(sparse_structure_sampler_params, slat_sampler_params, formats, multi_image_mode=mode)
        seeds = self._seeds(seed, num_samples)
        cond, neg = encode_conditions(self.cond_model, self._images(images), multi_image=True, copies=len(seeds))
        return self._sample(cond, neg, seeds, pipe, multi_image=True)


class TrellisTextTo3DPipeline(_Pipeline):
    """Text -> 3D assets (CLIP condition)."""

    kind = "text"

    def run(self, prompt: str, num_samples: int = 1, seed: int = 42, sparse_structure_sampler_params: dict | None = None,
            slat_sampler_params: dict | None = None, formats: Sequence[str] | None = None) -> dict:
        """One prompt -> `num_samples` assets with seeds seed, seed+1, ... (one jitted call)."""
        from trellis_jax.sample import check_texts

        check_texts([prompt], self.cond_model)
        pipe = self._variant(sparse_structure_sampler_params, slat_sampler_params, formats)
        seeds = self._seeds(seed, num_samples)
        cond, neg = encode_conditions(self.cond_model, [prompt], copies=len(seeds))
        return self._sample(cond, neg, seeds, pipe, multi_image=False)


def render_video(sample, num_frames: int = 120, resolution: int = 512, bg=(0.0, 0.0, 0.0)) -> dict:
    """Turntable frames of one asset on the reference's camera path: a Gaussian dict -> {'color'}, a
    MeshResult -> {'color' (when it has colour), 'normal'}; uint8 [num_frames, R, R, 3] each."""
    from trellis_jax.render.turntable import render_mesh_views, turntable_cameras
    from trellis_jax.render.preview import render_gaussian_views

    ext, intr = turntable_cameras(num_frames)
    if isinstance(sample, MeshResult):
        colour, normal = render_mesh_views(*sample, ext, intr, resolution, bg)
        return {"normal": normal, **({"color": colour} if colour is not None else {})}
    if isinstance(sample, dict) and "xyz" in sample:
        return {"color": render_gaussian_views(sample, ext, intr, resolution, bg)}
    raise TypeError(f"render_video renders a Gaussian sample (dict) or a MeshResult, got {type(sample).__name__}")


class GLBAsset(NamedTuple):
    """What `to_glb` returns: the mesh to write (uvs [n, 2] + texture uint8 [T, T, 3] when textured, else
    vertex_attrs with RGB first); `.export(path)` writes it atomically, y-up."""

    vertices: np.ndarray
    faces: np.ndarray
    vertex_attrs: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None

    def export(self, path) -> Path:
        from trellis_jax.export.mesh_glb import save_mesh_glb

        return save_mesh_glb(path, self.vertices, self.faces, self.vertex_attrs, self.uvs, self.texture)


def to_glb(gaussian: dict | None, mesh: MeshResult, simplify: float = 0.95, texture_size: int = 1024, mode: str = "fast",
           fill_holes: bool = True, num_views: int = 100, render_resolution: int = 512, steps: int = 2500,
           verbose: bool = True) -> GLBAsset:
    """One asset's mesh as a GLB: decimated by `simplify`, hidden faces removed and small holes filled
    (`fill_holes`), UV-unwrapped, with a `texture_size`² base-colour texture baked from `num_views` renders
    of `gaussian` (mode 'fast': projection; 'opt': `steps` Adam steps). Without Gaussians: the full mesh
    coloured per vertex by the mesh decoder's colour (said when `verbose`). See trellis_jax/export/mesh_glb.py."""
    from trellis_jax.export.mesh_glb import textured_mesh

    vertices, faces, attrs = (np.asarray(a) for a in mesh)
    if gaussian is None:
        if verbose:
            print("to_glb: no Gaussians given; writing the full mesh with per-vertex colours (no texture)")
        return GLBAsset(vertices, faces.astype(np.int32), attrs)
    t = textured_mesh(vertices, faces, gaussian, simplify=simplify, texture_size=texture_size, mode=mode,
                      fill_holes=fill_holes, num_views=num_views, render_resolution=render_resolution, steps=steps,
                      progress=verbose)
    return GLBAsset(t.vertices, t.faces, None, t.uvs, t.texture)


def save_ply(gaussian: dict, path) -> Path:
    """One Gaussian sample as a 3DGS PLY (the reference's `Gaussian.save_ply`), written atomically."""
    from trellis_jax.export.gaussian_ply import save_gaussian_ply

    return save_gaussian_ply(path, gaussian["xyz"], gaussian["features_dc"], gaussian["opacity"], gaussian["scaling"],
                             gaussian["rotation"])
