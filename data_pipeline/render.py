"""Render: offscreen RGBA views of a normalised asset with pyrender (EGL, else OSMesa).

The reference renders with Blender Cycles (docs/reference_facts.md#asset-normalisation-and-rendering).
We rasterise with pyrender instead, with the
same cameras (positions, FoV, OpenCV matrices stored next to each image) and a light rig placed like
the reference's (a key point light at (4, 1, 6), a strong light from above, a weak one from below).
Shading therefore differs from Cycles (no global illumination); geometry, framing and alpha agree.

Images are uint8 RGBA with straight (not premultiplied) alpha and a transparent background, row 0 at
the top, as Blender's PNGs.

`render_geometry` gives the same views' depth and normal maps, in the conventions of the pure-JAX
rasteriser (`trellis_jax.render.mesh_raster`) that the mesh-decoder task and the eval render with:
depth = camera-space z (0 off the asset); normal = the visible face's world-space unit normal, flipped
to face the camera, mapped to [0, 1] (0 off the asset). Normals come from a flat, unlit pass whose
face colours encode the face normals (8 bits per channel, i.e. ~0.008 per component); pyrender
multisamples colour, so a pixel that an edge between two faces crosses holds their blend (renormalised).

CLI: python -m data_pipeline.render MESH --out DIR [--views 150] [--resolution 512] [--cond]
writes DIR/000.png ... and DIR/cameras.npz (extrinsics [V,4,4], intrinsics [V,3,3], yaw/pitch/radius/fov).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

from data_pipeline import cameras
from data_pipeline.ingest import Asset, ingest

_PROBE = "import pyrender; r = pyrender.OffscreenRenderer(8, 8); r.delete()"


def _np2_shim():
    """pyrender still calls np.infty (removed in numpy 2)."""
    if not hasattr(np, "infty"):
        np.infty = np.inf


def _pyopengl_310_shim(pyrender):
    """PyOpenGL 3.1.0 (pinned by pyrender) cannot run `glGenTextures(1)` on Python 3.12 (no array
    handler for its by-reference output), so textured meshes fail to upload. Give pyrender's texture
    module a glGenTextures that passes a ctypes array to the raw entry point instead."""
    import OpenGL
    import pyrender.texture as texture

    if OpenGL.__version__ != "3.1.0" or getattr(texture, "_trellis_jax_patched", False):
        return
    from OpenGL import GL
    from OpenGL.raw.GL.VERSION.GL_1_1 import glGenTextures as raw_gen_textures

    def gen_textures(n):
        ids = (GL.GLuint * n)()
        raw_gen_textures(n, ids)
        return ids[0] if n == 1 else list(ids)

    texture.glGenTextures = gen_textures
    texture._trellis_jax_patched = True


def select_gl_platform() -> str:
    """Set PYOPENGL_PLATFORM before OpenGL is imported: keep the user's choice, else EGL if a probe
    context opens in a subprocess, else OSMesa. Child processes inherit the choice."""
    if os.environ.get("PYOPENGL_PLATFORM"):
        return os.environ["PYOPENGL_PLATFORM"]
    for platform in ("egl", "osmesa"):
        env = dict(os.environ, PYOPENGL_PLATFORM=platform)
        ok = subprocess.run([sys.executable, "-c", "import numpy as np; np.infty = np.inf; " + _PROBE],
                            env=env, capture_output=True, timeout=120).returncode == 0
        if ok:
            os.environ["PYOPENGL_PLATFORM"] = platform
            return platform
    raise RuntimeError("no offscreen OpenGL: neither EGL nor OSMesa could open a context "
                       "(for OSMesa: apt-get install libosmesa6 and pyopengl>=3.1.5)")


class Renderer:
    """A reusable offscreen renderer for square images; `resolution` may be changed between calls.

    Use one per process: pyrender's EGL contexts share the default display, and deleting one
    renderer terminates it for the others."""

    def __init__(self, resolution: int):
        select_gl_platform()
        _np2_shim()
        import pyrender  # imported late: needs PYOPENGL_PLATFORM

        _pyopengl_310_shim(pyrender)

        self._pyrender = pyrender
        self._resolution = int(resolution)
        self._renderer = pyrender.OffscreenRenderer(self._resolution, self._resolution)

    @property
    def resolution(self) -> int:
        return self._resolution

    @resolution.setter
    def resolution(self, value: int):
        self._resolution = int(value)
        self._renderer.viewport_width = self._renderer.viewport_height = self._resolution

    def close(self):
        if self._renderer is not None:
            try:
                self._renderer.delete()
            except Exception:  # the GL display may already be gone at interpreter exit
                pass
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _scene(self, asset: Asset, lights: bool = True):
        pr = self._pyrender
        scene = pr.Scene(bg_color=np.zeros(4), ambient_light=np.full(3, 0.25))
        for m in asset.meshes:
            scene.add(pr.Mesh.from_trimesh(m, smooth=False))
        if not lights:
            return scene
        key = np.eye(4)
        key[:3, 3] = (4.0, 1.0, 6.0)
        scene.add(pr.PointLight(color=np.ones(3), intensity=110.0), pose=key)
        scene.add(pr.DirectionalLight(color=np.ones(3), intensity=2.5), pose=np.eye(4))  # points down (-z)
        below = np.diag([1.0, -1.0, -1.0, 1.0])  # points up (+z)
        scene.add(pr.DirectionalLight(color=np.ones(3), intensity=0.6), pose=below)
        return scene

    def _views(self, asset: Asset, extrinsics: np.ndarray, intrinsics: np.ndarray, flags, lights: bool = True):
        """pyrender's (colour, depth) for each (world->cam OpenCV, normalised K) view, in order."""
        pr = self._pyrender
        scene = self._scene(asset, lights)
        res = self.resolution
        cam_node = None
        for pose, k in zip(cameras.opengl_c2w_from_extrinsics(extrinsics), intrinsics):
            cam = pr.IntrinsicsCamera(fx=k[0, 0] * res, fy=k[1, 1] * res, cx=k[0, 2] * res, cy=k[1, 2] * res,
                                      znear=0.05, zfar=100.0)
            if cam_node is not None:
                scene.remove_node(cam_node)
            cam_node = scene.add(cam, pose=pose)
            yield self._renderer.render(scene, flags=flags)

    def render(self, asset: Asset, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
        """RGBA uint8 [V, R, R, 4] of the asset seen by each (world->cam OpenCV, normalised K) view."""
        views = self._views(asset, extrinsics, intrinsics, self._pyrender.RenderFlags.RGBA)
        return np.stack([_unpremultiply(color) for color, _ in views])

    def render_geometry(self, asset: Asset, extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth f32 [V, R, R], normal f32 [V, R, R, 3] in [0, 1]) of each view (see the module docstring)."""
        pr = self._pyrender
        import trimesh

        vertices, faces = asset.geometry()
        tri = trimesh.Trimesh(vertices, faces, process=False)
        n = np.asarray(tri.face_normals, np.float64)
        colours = np.concatenate([np.clip(np.rint((n + 1) * 127.5), 0, 255), np.full((len(n), 1), 255)], 1)
        tri.visual = trimesh.visual.ColorVisuals(tri, face_colors=colours.astype(np.uint8))
        flat = Asset([tri], asset.scale, asset.offset, asset.source)
        flags = pr.RenderFlags.FLAT | pr.RenderFlags.RGBA
        depth, normal = [], []
        for (color, z), E, K in zip(self._views(flat, extrinsics, intrinsics, flags, lights=False), extrinsics, intrinsics):
            z = np.asarray(z, np.float32)
            depth.append(z)
            normal.append(_decode_normals(color, z > 0, E, K))
        return np.stack(depth), np.stack(normal)

    def render_depth(self, asset: Asset, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
        """Camera-space depth f32 [V, R, R] (0 where no surface) of each view, without multisampling."""
        views = self._views(asset, extrinsics, intrinsics, self._pyrender.RenderFlags.DEPTH_ONLY)
        return np.stack([np.asarray(depth, np.float32) for depth in views])


def _unpremultiply(rgba: np.ndarray) -> np.ndarray:
    """Multisampled edges come back premultiplied (blended with the black clear colour); store
    straight alpha like Blender's PNGs so that premultiplying later is not applied twice."""
    alpha = rgba[..., 3:4].astype(np.float32)
    rgb = rgba[..., :3].astype(np.float32) * 255.0 / np.maximum(alpha, 1.0)
    rgb = np.where(alpha > 0, np.clip(np.rint(rgb), 0, 255), 0)
    return np.concatenate([rgb.astype(np.uint8), rgba[..., 3:4]], axis=-1)


def _decode_normals(rgba: np.ndarray, covered: np.ndarray, E: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Flat-pass colours [R, R, 4] uint8 -> world normals facing the camera, in [0, 1] [R, R, 3] (0 where
    not covered). Edge pixels blend with the background under multisampling and are renormalised."""
    res = rgba.shape[0]
    alpha = np.maximum(rgba[..., 3:4].astype(np.float64), 1.0)
    n = rgba[..., :3].astype(np.float64) / alpha * 2.0 - 1.0
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8)
    jj, ii = np.meshgrid((np.arange(res) + 0.5) / res, (np.arange(res) + 0.5) / res)
    ray = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1) @ np.asarray(E, np.float64)[:3, :3]
    n = np.where(np.sum(n * ray, -1, keepdims=True) > 0, -n, n)
    return np.where(covered[..., None], (n + 1) / 2, 0.0).astype(np.float32)


def render_asset(renderer: Renderer, asset: Asset, views: dict[str, np.ndarray], geometry: bool = False) -> dict[str, np.ndarray]:
    """Render the given (yaw, pitch, radius, fov) views -> {'images', 'extrinsics', 'intrinsics'}
    (+ 'depth' [V, R, R], 'normal' [V, R, R, 3] with `geometry`; see `Renderer.render_geometry`)."""
    ext = cameras.extrinsics_from_views(views)
    intr = cameras.intrinsics_from_fov(views["fov"])
    out = {"images": renderer.render(asset, ext, intr), "extrinsics": ext, "intrinsics": intr}
    if geometry:
        out["depth"], out["normal"] = renderer.render_geometry(asset, ext, intr)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mesh")
    p.add_argument("--out", required=True)
    p.add_argument("--views", type=int, default=None, help="default 150 (24 with --cond)")
    p.add_argument("--resolution", type=int, default=None, help="default 512 (1024 with --cond)")
    p.add_argument("--cond", action="store_true", help="condition-view distribution (random radius/FoV)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = args.views or (24 if args.cond else 150)
    res = args.resolution or (1024 if args.cond else 512)
    rng = np.random.default_rng(args.seed)
    views = (cameras.cond_views if args.cond else cameras.render_views)(n, rng)
    from PIL import Image

    with Renderer(res) as r:
        out = render_asset(r, ingest(args.mesh), views)
    os.makedirs(args.out, exist_ok=True)
    for i, img in enumerate(out["images"]):
        Image.fromarray(img).save(os.path.join(args.out, f"{i:03d}.png"))
    np.savez(os.path.join(args.out, "cameras.npz"), extrinsics=out["extrinsics"], intrinsics=out["intrinsics"], **views)
    print(f"wrote {n} views at {res}^2 to {args.out}")


if __name__ == "__main__":
    main()
