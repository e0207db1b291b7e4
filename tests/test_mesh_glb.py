"""Textured GLB export: projection / optimisation bake, hidden-face removal, decimation, y-up, trimesh loading."""
import numpy as np
import pytest
import trimesh

from trellis_jax.api import MeshResult, to_glb
from trellis_jax.export.mesh_glb import bake_texture, save_mesh_glb, unwrap_uvs, visible_faces
from trellis_jax.render.cameras import sphere_cameras
from trellis_jax.render.turntable import render_mesh_views

PALETTE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], float) * 0.8 + 0.1


def _face_coloured_sphere():
    """Icosphere with one colour per face (by the sign of its normal's dominant axis), vertices unshared."""
    s = trimesh.creation.icosphere(2, radius=0.45)
    n = s.face_normals
    ax = np.abs(n).argmax(1)
    colours = PALETTE[ax * 2 + (n[np.arange(len(n)), ax] < 0)]
    vertices = s.vertices[s.faces].reshape(-1, 3)
    return vertices, np.arange(len(vertices)).reshape(-1, 3), colours


def _glb_face_colours(path):
    """Colour of the loaded GLB's texture at each face's UV centroid (trimesh's reading of the file)."""
    m = trimesh.load(path, force="mesh")
    img = np.asarray(m.visual.material.baseColorTexture.convert("RGB")) / 255.0
    c = m.visual.uv[m.faces].mean(1)
    T = img.shape[0]
    return img[np.clip(((1 - c[:, 1]) * T).astype(int), 0, T - 1), np.clip((c[:, 0] * T).astype(int), 0, T - 1)], m


@pytest.mark.parametrize("mode", ["fast", "opt"])
def test_bake_of_known_face_colours_reads_back(tmp_path, mode):
    vertices, faces, colours = _face_coloured_sphere()
    ext, intr = sphere_cameras(16)
    images, _ = render_mesh_views(vertices, faces, np.repeat(colours, 3, 0), ext, intr, 96)
    v, f, uvs = unwrap_uvs(vertices, faces)
    texture = bake_texture(v, f, uvs, images, ext, intr, texture_size=96, mode=mode, steps=100, progress=False)
    got, _ = _glb_face_colours(save_mesh_glb(tmp_path / "s.glb", v, f, uvs=uvs, texture=texture))
    err = np.abs(got - colours).max(1)
    assert np.median(err) < 0.02 and (err < 0.1).mean() > 0.95, (np.median(err), (err < 0.1).mean())


def test_hidden_faces_are_removed():
    outer, inner = trimesh.creation.icosphere(1, radius=0.45), trimesh.creation.icosphere(1, radius=0.2)
    vertices = np.concatenate([outer.vertices, inner.vertices])
    faces = np.concatenate([outer.faces, inner.faces + len(outer.vertices)])
    seen = visible_faces(vertices, faces, num_views=12, resolution=96)
    assert seen[: len(outer.faces)].all() and not seen[len(outer.faces):].any()


def _ellipsoid_gaussians():
    """An ellipsoid (half as tall as wide, z-up) and Gaussians on its surface: red above z = 0, blue below."""
    mesh = trimesh.creation.icosphere(3, radius=0.45)
    mesh.vertices[:, 2] *= 0.5
    pts, _ = trimesh.sample.sample_surface_even(mesh, 6000, seed=0)
    rgb = np.where(pts[:, 2:3] > 0, [0.9, 0.1, 0.1], [0.1, 0.1, 0.9])
    n = len(pts)
    g = {"xyz": pts.astype(np.float32), "features_dc": ((rgb - 0.5) / 0.28209479).astype(np.float32),
         "opacity": np.full(n, 0.95, np.float32), "scaling": np.full((n, 3), 0.012, np.float32),
         "rotation": np.tile(np.float32([1, 0, 0, 0]), (n, 1))}
    return mesh, g


def test_to_glb_textured_from_gaussians(tmp_path):
    mesh, g = _ellipsoid_gaussians()
    m = MeshResult(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), np.zeros((len(mesh.vertices), 6), np.float32))
    asset = to_glb(g, m, simplify=0.7, texture_size=64, num_views=12, render_resolution=64, verbose=False)
    colours, loaded = _glb_face_colours(asset.export(tmp_path / "mesh.glb"))
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    assert loaded.visual.material.baseColorTexture.size == (64, 64)
    assert loaded.visual.uv.min() >= 0 and loaded.visual.uv.max() <= 1
    assert len(loaded.faces) < 0.4 * len(mesh.faces)
    extent = loaded.vertices.max(0) - loaded.vertices.min(0)  # y-up: the short (z) axis is now y
    assert extent[1] < 0.6 * extent[0] and abs(extent[0] - extent[2]) < 0.05
    y = loaded.triangles_center[:, 1]
    top, bottom = colours[y > 0.05], colours[y < -0.05]
    assert (top[:, 0] > top[:, 2]).mean() > 0.9 and (bottom[:, 2] > bottom[:, 0]).mean() > 0.9


def test_to_glb_without_gaussians_is_vertex_coloured(tmp_path, capsys):
    mesh, _ = _ellipsoid_gaussians()
    attrs = np.concatenate([np.full((len(mesh.vertices), 3), 0.5), np.zeros((len(mesh.vertices), 3))], 1)
    path = to_glb(None, MeshResult(mesh.vertices, mesh.faces, attrs)).export(tmp_path / "m.glb")
    assert "per-vertex colours" in capsys.readouterr().out
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(mesh.faces) and (loaded.visual.vertex_colors[:, :3] == 128).all()


def test_bad_bake_mode_and_simplify():
    mesh, g = _ellipsoid_gaussians()
    m = MeshResult(mesh.vertices, mesh.faces, np.zeros((len(mesh.vertices), 6)))
    with pytest.raises(ValueError, match="bake mode"):
        to_glb(g, m, mode="nearest")
    with pytest.raises(ValueError, match="simplify"):
        to_glb(g, m, simplify=1.0)
