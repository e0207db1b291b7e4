"""Pure-JAX mesh rasteriser: against pyrender, perspective-correct interpolation, antialiased coverage
and its gradient, padding and overflow."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from trellis_jax.render import mesh_raster as mr
from trellis_jax.render.cameras import look_at, orbit_cameras

R = 64


def _scene():
    sphere = trimesh.creation.icosphere(2, 0.35)
    box = trimesh.creation.box((0.3, 0.3, 0.3), trimesh.transformations.translation_matrix((0.25, -0.3, 0.1)))
    return trimesh.util.concatenate([sphere, box])


def _cameras():
    return orbit_cameras(np.deg2rad([0, 100, 230]), [0.2, 0.5, -0.3], 2.0, 40.0)


def _raster(vertices, faces, ext, intr, face_mask=None, **kw):
    face_mask = np.ones(len(faces), bool) if face_mask is None else face_mask
    return mr.rasterize_mesh(jnp.asarray(vertices, jnp.float32), jnp.asarray(faces, jnp.int32), jnp.asarray(face_mask),
                             jnp.asarray(ext), jnp.asarray(intr), height=R, width=R, **kw)


def _near_edge(mask):
    """Pixels whose 3×3 neighbourhood is not all covered or all empty."""
    from scipy import ndimage

    k = np.ones((1, 3, 3), bool)
    return ndimage.binary_dilation(mask, k) & ~ndimage.binary_erosion(mask, k)


@pytest.fixture(scope="module")
def pyrender_depth():
    render = pytest.importorskip("data_pipeline.render")
    from data_pipeline.ingest import Asset

    try:
        r = render.Renderer(R)
    except Exception as e:  # no offscreen GL on this machine
        pytest.skip(f"offscreen rendering unavailable: {e}")
    ext, intr = _cameras()
    depth = r.render_depth(Asset([_scene()], 1.0, np.zeros(3), "test"), ext, intr)
    r.close()
    return depth


def test_mask_and_depth_match_pyrender(pyrender_depth):
    mesh = _scene()
    ext, intr = _cameras()
    ras = _raster(mesh.vertices, mesh.faces, ext, intr)
    assert not np.asarray(ras.overflow).any()
    ref_mask, mask = pyrender_depth > 0, np.asarray(ras.mask)
    edge = _near_edge(ref_mask)
    assert ref_mask.sum() > 1500
    assert not ((ref_mask != mask) & ~edge).any()
    assert (ref_mask != mask).sum() < 0.05 * ref_mask.sum()
    depth = np.asarray(ras.depth)
    inner = ref_mask & mask & ~edge
    err = np.abs(depth - pyrender_depth)[inner]
    # pyrender resolves depth from one multisample, off the pixel centre: allow one pixel's depth step
    pad = np.pad(depth, ((0, 0), (1, 1), (1, 1)), mode="edge")
    step = np.max([np.abs(pad[:, 1 + a:1 + a + R, 1 + b:1 + b + R] - depth) for a in (-1, 0, 1) for b in (-1, 0, 1)], 0)
    assert np.all(err <= 1e-3 + step[inner])
    assert np.median(err) < 5e-3


def test_interpolated_positions_project_to_pixel_centres():
    """Perspective-correct barycentrics: the interpolated world position of each covered pixel projects
    back to that pixel's centre and sits at the reported depth."""
    mesh = _scene()
    ext, intr = _cameras()
    ras = _raster(mesh.vertices, mesh.faces, ext, intr)
    pos = np.asarray(mr.interpolate(jnp.asarray(mesh.vertices, jnp.float32), ras, jnp.asarray(mesh.faces)))
    mask = np.asarray(ras.mask)
    cam = np.einsum("cij,chwj->chwi", ext[:, :3, :3], pos) + ext[:, None, None, :3, 3]
    u = intr[:, None, None, 0, 0] * R * cam[..., 0] / cam[..., 2] + intr[:, None, None, 0, 2] * R
    jj = np.broadcast_to(np.arange(R) + 0.5, u.shape)
    np.testing.assert_allclose(u[mask], jj[mask], atol=2e-3)
    np.testing.assert_allclose(cam[..., 2][mask], np.asarray(ras.depth)[mask], rtol=1e-5)
    n = np.asarray(mr.pixel_face_normals(jnp.asarray(mesh.vertices, jnp.float32), jnp.asarray(mesh.faces), ras))
    np.testing.assert_allclose(np.linalg.norm(n[mask], axis=-1), 1.0, rtol=1e-5)
    view = pos - np.linalg.inv(ext)[:, None, None, :3, 3]
    assert np.mean(np.sum(n * view, -1)[mask] < 0) > 0.99  # outward normals face the camera


E1 = look_at(np.array([0.0, -2.0, 0.0]))[None]
K1 = np.array([[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]], np.float32)
TRI = np.array([[-0.3, 0.0, -0.25], [0.35, 0.0, -0.2], [0.02, 0.0, 0.33]], np.float32)  # facing the camera


def _soft_mask(vertices):
    faces = jnp.array([[0, 1, 2]], jnp.int32)
    ras = mr.rasterize_mesh(vertices, faces, jnp.ones(1, bool), jnp.asarray(E1), jnp.asarray(K1), height=R, width=R)
    return mr.antialias(ras.mask[..., None].astype(jnp.float32), ras, faces)[..., 0]


def test_antialiased_coverage_is_the_triangle_area():
    screen, _ = mr.project_vertices(jnp.asarray(TRI), jnp.asarray(E1), jnp.asarray(K1), R, R)
    s = np.asarray(screen[0], np.float64)
    (ax, ay), (bx, by) = s[1] - s[0], s[2] - s[0]
    area = 0.5 * abs(ax * by - ay * bx)  # 2-D cross product (NumPy 2 refuses np.cross on 2-vectors)
    hard = float(jnp.sum(_soft_mask(jnp.asarray(TRI)) > 0.999))
    soft = float(jnp.sum(_soft_mask(jnp.asarray(TRI))))
    assert abs(soft - area) < 0.02 * area  # the antialiased mask integrates to the analytic area
    assert hard < soft


def test_silhouette_gradient_matches_finite_differences():
    loss = lambda v: jnp.sum(_soft_mask(v) * jnp.linspace(0.5, 1.5, R)[None, None, :])  # weights break symmetry
    grad = np.asarray(jax.grad(loss)(jnp.asarray(TRI)))
    assert np.abs(grad).max() > 1.0
    eps = 1e-4  # ≈ 0.003 px: no pixel centre changes sides (coverage events are discrete, see mesh_raster)
    for vi, axis in [(0, 0), (0, 2), (1, 0), (1, 2), (2, 0), (2, 2)]:
        d = np.zeros_like(TRI)
        d[vi, axis] = eps
        fd = (float(loss(jnp.asarray(TRI + d))) - float(loss(jnp.asarray(TRI - d)))) / (2 * eps)
        np.testing.assert_allclose(grad[vi, axis], fd, rtol=0.02, atol=0.5)


def test_padded_faces_are_ignored_and_overflow_is_reported():
    mesh = _scene()
    ext, intr = _cameras()
    faces = np.concatenate([mesh.faces, np.zeros((5, 3), np.int64)])
    ras = _raster(mesh.vertices, faces, ext, intr, face_mask=np.arange(len(faces)) < len(mesh.faces))
    full = _raster(mesh.vertices, mesh.faces, ext, intr)
    np.testing.assert_array_equal(np.asarray(ras.triangle_id), np.asarray(full.triangle_id))
    none = _raster(mesh.vertices, mesh.faces, ext, intr, face_mask=np.zeros(len(mesh.faces), bool))
    assert not np.asarray(none.mask).any()
    tight = _raster(mesh.vertices, mesh.faces, ext, intr, tile_capacity=2)
    assert np.asarray(tight.overflow).all()
    tight_bins = _raster(mesh.vertices, mesh.faces, ext, intr, bin_capacity=64)
    assert np.asarray(tight_bins.overflow).all()
    # the reported load is what the capacities must be: exactly that much renders the same image
    load = np.asarray(full.tile_load)
    np.testing.assert_array_equal(np.asarray(tight.tile_load), load)
    exact = _raster(mesh.vertices, mesh.faces, ext, intr, tile_capacity=int(load[:, 0].max()), bin_capacity=int(load[:, 1].max()))
    assert not np.asarray(exact.overflow).any()
    np.testing.assert_array_equal(np.asarray(exact.triangle_id), np.asarray(full.triangle_id))


@pytest.mark.parametrize("first", ["same_vertex", "nearly_degenerate"])
def test_gradients_are_finite_with_degenerate_and_padding_faces(first):
    """Face 0 (the stand-in face of background pixels) degenerate: one vertex thrice, or three vertices
    a rounding error apart (FlexiCubes' padding fans in the training split: its barycentrics' partials
    overflowed and met a zero cotangent, NaN)."""
    mesh = trimesh.creation.icosphere(2, 0.35)
    n = len(mesh.vertices)
    vertices = np.concatenate([mesh.vertices, mesh.vertices[:1] + [1e-6, 0, 0], mesh.vertices[:1] + [0, 1e-6, 1e-6]])
    vertices = vertices.astype(np.float32)
    face0 = [[0, 0, 0]] if first == "same_vertex" else [[0, n, n + 1]]
    faces = jnp.asarray(np.concatenate([face0, mesh.faces, np.zeros((7, 3))]), jnp.int32)
    face_mask = jnp.arange(len(faces)) < len(mesh.faces) + 1
    ext, intr = _cameras()

    def loss(v, col):
        ras = mr.rasterize_mesh(v, faces, face_mask, jnp.asarray(ext), jnp.asarray(intr), height=32, width=32)
        img = jnp.concatenate([mr.interpolate(col, ras, faces), mr.pixel_face_normals(v, faces, ras)], -1)
        normals = mr.vertex_normals(v, faces, face_mask)
        return jnp.sum(mr.antialias(img, ras, faces)) + jnp.sum(ras.depth) + jnp.sum(mr.interpolate(normals, ras, faces))

    gv, gc = jax.grad(loss, argnums=(0, 1))(jnp.asarray(vertices), jnp.ones((len(vertices), 3)))
    assert np.isfinite(np.asarray(gv)).all() and np.isfinite(np.asarray(gc)).all()
    assert np.abs(np.asarray(gv)).max() > 0


def test_dataset_depth_and_normals_match_the_rasteriser():
    """data_pipeline's stored geometry renders (pyrender) agree with what training and eval rasterise:
    same coverage and depth except at silhouette pixels, and the camera-facing normal map up to 8-bit
    quantisation and multisample blends across face edges."""
    render = pytest.importorskip("data_pipeline.render")
    from data_pipeline.ingest import Asset

    try:
        r = render.Renderer(R)
    except Exception as e:  # no offscreen GL on this machine
        pytest.skip(f"offscreen rendering unavailable: {e}")
    mesh = _scene()
    ext, intr = _cameras()
    depth, normal = r.render_geometry(Asset([mesh], 1.0, np.zeros(3), "test"), ext, intr)
    r.close()
    ras = _raster(mesh.vertices, mesh.faces, ext, intr, near=1.0, far=3.0)
    ours = np.asarray(mr.camera_facing_normal_map(jnp.asarray(mesh.vertices, jnp.float32), jnp.asarray(mesh.faces),
                                                  ras, jnp.asarray(ext)))
    ref_mask = depth > 0
    edge = _near_edge(ref_mask)
    assert not ((ref_mask != np.asarray(ras.mask)) & ~edge).any()
    inner = ref_mask & np.asarray(ras.mask) & ~edge
    assert np.median(np.abs(depth - np.asarray(ras.depth))[inner]) < 5e-3
    err = np.abs(normal - ours)
    # 8-bit face colours (1/255 in [0, 1]); pyrender multisamples colour, so a pixel that an edge between two
    # faces crosses holds a blend of their normals: allow the spread of the rasterised normals around it
    pad = np.pad(ours, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    near = [pad[:, 1 + a:1 + a + R, 1 + b:1 + b + R] for a in (-1, 0, 1) for b in (-1, 0, 1)]
    spread = np.max(near, 0) - np.min(near, 0)
    assert np.median(err.max(-1)[inner]) < 3 / 255
    assert np.all(err[inner] <= spread[inner] + 0.02)
    assert (normal[~ref_mask] == 0).all() and np.all((normal >= 0) & (normal <= 1))
    # facing the camera: the normal (2x - 1) points against the view ray at every covered pixel
    n = normal * 2 - 1
    origin = -np.einsum("cji,cj->ci", ext[:, :3, :3], ext[:, :3, 3])
    pos = np.asarray(mr.interpolate(jnp.asarray(mesh.vertices, jnp.float32), ras, jnp.asarray(mesh.faces)))
    assert (np.sum(n * (pos - origin[:, None, None]), -1)[inner] < 0).all()
