"""FlexiCubes mesh extraction (trellis_jax.representations.mesh): reference parity on the mesh-decoder
surface fixture, a closed sphere, capacity overflow, gradients, one compilation per shape."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.representations.mesh import cube_tables, extract_mesh
from trellis_jax.representations.mesh.extract import _extract
from trellis_jax.sparse.tensor import CapacityError, SparseTensor
from trellis_jax.tools import check_fixture
from trellis_jax.tools.mesh_fixture import MESH_KEYS, compare_mesh
from tests.flexicubes_reference import dense_flexicubes

REPO = Path(__file__).resolve().parents[1]
REFERENCE = next((p / "shared" / "reference" for p in REPO.parents if (p / "shared" / "reference").is_dir()),
                 REPO.parent / "shared" / "reference")
MESH_CASE = REFERENCE / "fixtures_next" / "slat_dec_mesh_b1_v"

RES = 16


def sphere_features(centre, radius, res=RES, capacity=None, deform_scale=0.0, seed=0):
    """Active cubes = the solid ball plus a one-cube margin; per-corner sdf of the sphere (the −1/res
    bias cancelled), colour logits from the corner position, zero weights; optional random deform."""
    centre = np.asarray(centre, np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (idx + 0.5) / res - 0.5
    coords = idx[np.linalg.norm(centres - centre, axis=-1) - radius < 1.5 / res]
    corners = (coords[:, None, :] + cube_tables.CORNERS[None]) / res - 0.5  # [L, 8, 3]
    sdf = np.linalg.norm(corners - centre, axis=-1) - radius + 1.0 / res
    rng = np.random.default_rng(seed)
    deform = deform_scale * rng.normal(size=(len(coords), 8, 3))
    color = np.concatenate([corners * 4, -corners * 4], -1)  # [L, 8, 6]
    feats = np.concatenate([sdf, deform.reshape(-1, 24), np.zeros((len(coords), 21)), color.reshape(-1, 48)], -1)
    cap = capacity or len(coords)
    out_c = np.zeros((cap, 3), np.int32)
    out_f = np.zeros((cap, 101), np.float32)
    out_c[: len(coords)], out_f[: len(coords)] = coords, feats
    return out_c, out_f, np.arange(cap) < len(coords)


def batch(*samples, res=RES):
    c, f, m = (np.stack(x) for x in zip(*samples))
    return SparseTensor(jnp.asarray(c), jnp.asarray(f), jnp.asarray(m), res)


def test_tables_follow_the_cube_geometry():
    # Every sign-change edge of a case belongs to exactly one dual vertex; complements share edges.
    for case in range(256):
        neg = [(case >> j) & 1 for j in range(8)]
        cut = sorted(e for e, (a, b) in enumerate(cube_tables.EDGES) if neg[a] != neg[b])
        groups = [g[g >= 0] for g in cube_tables.DMC_GROUPS[case][: cube_tables.NUM_VD[case]]]
        assert sorted(np.concatenate(groups).tolist() if groups else []) == cut
    assert cube_tables.NUM_VD[1] == 1 and cube_tables.NUM_VD[6] == 2 and cube_tables.NUM_VD[255 - 6] == 1
    assert cube_tables.NUM_VD[0b10000001] == 2 and cube_tables.NUM_VD[255 - 0b10000001] == 2  # body diagonal
    checked = np.nonzero(cube_tables.CHECK[:, 0])[0]
    assert len(checked) == 36 and all(cube_tables.CHECK[c, 4] == 255 - c for c in checked)


def test_reference_mesh_fixture(capsys):
    if not (MESH_CASE / "io.npz").exists():
        pytest.skip(f"no reference mesh fixture at {MESH_CASE}")
    rc = check_fixture.main([str(MESH_CASE)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{MESH_CASE.name} out_faces max_abs_err=0.000e+00" in out and "out_vertices" in out


def _check_closed_sphere(v, f, a, centre, radius):
    # Closed, consistently oriented 2-manifold: every directed edge once, and its reverse once.
    directed = Counter(map(tuple, np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])))
    assert all(n == 1 for n in directed.values())
    assert all(directed[(j, i)] == 1 for (i, j) in directed)
    assert len(v) - len(directed) // 2 + len(f) == 2  # Euler characteristic of a sphere
    r = np.linalg.norm(v - centre, axis=-1)
    assert (r - radius).min() > -0.25 / RES and (r - radius).max() < 1e-6
    # Outward: positive signed volume a little below the ball's (dual vertices average crossings on
    # the sphere, so they lie just inside it), and every face normal points away from the centre.
    p0, p1, p2 = v[f[:, 0]] - centre, v[f[:, 1]] - centre, v[f[:, 2]] - centre
    volume = np.einsum("ij,ij->i", p0, np.cross(p1, p2)).sum() / 6
    assert 0.85 < volume / (4 / 3 * np.pi * radius**3) < 1.0
    normals = np.cross(p1 - p0, p2 - p0)
    assert (np.einsum("ij,ij->i", normals, p0 + p1 + p2) > 0).all()
    assert a.shape == (len(v), 6) and a.min() >= 0 and a.max() <= 1


SPHERES = (((0.0, 0.0, 0.0), 0.3), ((0.05, -0.02, 0.03), 0.22))


@pytest.fixture(scope="module")
def spheres():
    """Two spheres in one batch (one shape, compiled once for the tests below)."""
    cap = len(sphere_features(*SPHERES[0])[0])
    return batch(*(sphere_features(c, r, capacity=cap) for c, r in SPHERES))


def test_sphere_gives_a_closed_outward_mesh_per_sample(spheres):
    mesh = extract_mesh(spheres)
    assert not np.asarray(mesh.overflow).any()
    for b, (centre, radius) in enumerate(SPHERES):
        _check_closed_sphere(*mesh.sample(b), np.asarray(centre), radius)


def test_overflow_is_reported_per_sample_never_dropped(spheres):
    full = extract_mesh(spheres)
    nv, nf = np.asarray(full.num_vertices), np.asarray(full.num_faces)
    assert nv[0] > nv[1] and nf[0] > nf[1]
    # Capacities that fit sample 1 exactly: sample 1 is complete, sample 0 overflows and says what it needs.
    tight = extract_mesh(spheres, max_vertices=int(nv[1]), max_faces=int(nf[1]))
    assert np.asarray(tight.overflow).tolist() == [True, False]
    assert np.asarray(tight.face_mask).sum(1).tolist() == [nf[1], nf[1]]
    assert np.asarray(tight.required)[:, 1:].tolist() == np.stack([nv, nf], 1).tolist()
    for got, want in zip(tight.sample(1), full.sample(1)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(CapacityError):
        tight.sample(0)
    few_cubes = extract_mesh(spheres, max_cubes=64)
    assert np.asarray(few_cubes.overflow).all() and (np.asarray(few_cubes.required)[:, 0] > 64).all()


def test_gradients_reach_sdf_deform_and_weights(spheres):
    rng = np.random.default_rng(1)
    feats = np.array(spheres.feats)
    feats[..., 8:32] = rng.normal(size=feats[..., 8:32].shape) * 0.3
    feats[..., 32:53] = rng.normal(size=feats[..., 32:53].shape) * 0.5
    feats = jnp.asarray(np.where(np.asarray(spheres.mask)[..., None], feats, 0))
    probe = jnp.asarray(rng.normal(size=(2, spheres.capacity, 3)), jnp.float32)

    def loss(f):
        mesh = extract_mesh(spheres.replace(feats=f))
        return jnp.sum(jnp.where(mesh.vertex_mask[..., None], mesh.vertices * probe, 0.0))

    g = np.asarray(jax.jit(jax.grad(loss))(feats))
    assert np.isfinite(g).all()
    for name, cols in [("sdf", slice(0, 8)), ("deform", slice(8, 32)), ("beta", slice(32, 44)), ("alpha", slice(44, 52))]:
        assert np.abs(g[..., cols]).max() > 1e-4, name
    # Directional derivative along the deform logits matches central differences (topology is fixed).
    d = np.zeros(feats.shape, np.float32)
    d[..., 8:32] = rng.normal(size=d[..., 8:32].shape)
    d = jnp.asarray(d * np.asarray(spheres.mask)[..., None])
    eps = 1e-2
    numeric = float(loss(feats + eps * d) - loss(feats - eps * d)) / (2 * eps)
    assert abs(numeric - float(jnp.sum(g * d))) < 1e-3 * max(1.0, abs(numeric))


def test_matches_a_dense_grid_reference_on_noisy_fields_with_holes(spheres, tmp_path):
    """Per-corner sdf noise (cubes disagree at shared vertices), 15 % of the cubes removed (inactive
    surface cubes, holes), random deformations, weights and colours: the same mesh as the dense-grid
    brute force, including cubes whose ambiguous face is resolved jointly with a neighbour."""
    rng = np.random.default_rng(3)
    cap, samples, stats = spheres.capacity, [], []
    for b, (centre, radius) in enumerate(SPHERES):
        c, f, m = sphere_features(centre, radius, capacity=cap, deform_scale=0.5, seed=b)
        keep = np.sort(rng.choice(int(m.sum()), int(m.sum() * 0.85), replace=False))
        c2, f2 = np.zeros_like(c), np.zeros_like(f)
        c2[: len(keep)], f2[: len(keep)] = c[keep], f[keep]
        f2[: len(keep), 0:8] += rng.normal(size=(len(keep), 8)) * (0.8 if b == 0 else 2.5) / RES
        f2[: len(keep), 32:101] = rng.normal(size=(len(keep), 69))
        samples.append((c2, f2, np.arange(cap) < len(keep)))
    mesh = extract_mesh(batch(*samples))  # same shape as `spheres`: no new compilation
    for b, (c, f, m) in enumerate(samples):
        stats.append({})
        v, faces, a = dense_flexicubes(c[m], f[m], RES, stats=stats[-1])
        np.savez(tmp_path / "io.npz", out_vertices=v, out_faces=faces, out_vertex_attrs=a)
        ours = dict(zip(MESH_KEYS, mesh.sample(b)))
        with np.load(tmp_path / "io.npz") as io:
            errs = compare_mesh(ours, io)
        assert errs["out_vertices"] < 1e-6 and errs["out_faces"] == 0 and errs["out_vertex_attrs"] < 1e-6, (b, errs)
    # The comparison itself sees a reversed face, a moved vertex and a missing face.
    flipped, moved = faces.copy(), v.copy()
    flipped[0] = flipped[0, ::-1]
    moved[5] += [1e-3, 0, 0]
    for bad, key in [(dict(out_faces=flipped), "out_faces"), (dict(out_vertices=moved), "out_vertices"),
                     (dict(out_faces=faces[1:]), "out_faces")]:
        np.savez(tmp_path / "io.npz", **{**dict(out_vertices=v, out_faces=faces, out_vertex_attrs=a), **bad})
        with np.load(tmp_path / "io.npz") as io:
            assert compare_mesh(ours, io)[key] >= 1e-3 - 1e-6, key
    assert all(s["inactive_surface"] > 0 for s in stats) and stats[1]["inverted"] > 0, stats


def test_compiles_once_per_shape(spheres):
    extract_mesh(spheres)
    before = _extract._cache_size()
    m = extract_mesh(spheres.replace(feats=spheres.feats.at[..., 0:8].add(0.01)))
    assert _extract._cache_size() == before
    assert (np.asarray(m.num_faces) > 0).all()


def test_vertex_coloured_glb_is_y_up(spheres, tmp_path):
    import trimesh

    from trellis_jax.export.mesh_glb import save_mesh_glb

    v, f, a = extract_mesh(spheres).sample(1)
    path = save_mesh_glb(tmp_path / "mesh.glb", v, f, a)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(v) and len(loaded.faces) == len(f)
    np.testing.assert_allclose(loaded.vertices, np.stack([v[:, 0], v[:, 2], -v[:, 1]], -1), atol=1e-6)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], np.round(a[:, :3] * 255).astype(np.uint8))
    assert loaded.is_watertight and loaded.volume > 0
    with pytest.raises(ValueError, match="empty mesh"):
        save_mesh_glb(tmp_path / "empty.glb", v[:0], f[:0])


@jax.jit
def _both_splits(st: SparseTensor):
    """Per sample, the DualMesh of the inference and of the training split (same cube table) and the
    cube table's γ [B, K] (a dual vertex in slot s has its cube's γ, cube s // 4)."""
    from trellis_jax.models.slat_mesh_decoder import mesh_channel_split
    from trellis_jax.representations.mesh.flexicubes import dual_mesh, normalized_weights
    from trellis_jax.representations.mesh.sparse_grid import build_cube_grid

    def one(c, f, m):
        p = mesh_channel_split(f, True)
        grid = build_cube_grid(c, m, p["sdf"] - 1.0 / RES, p["deform"], p["color"], p["weights"], RES, c.shape[0])
        return dual_mesh(grid), dual_mesh(grid, training=True), normalized_weights(grid.weights)[2]

    return jax.vmap(one)(st.coords, st.feats, st.mask)


def _random_weights(spheres, seed=4):
    rng = np.random.default_rng(seed)
    feats = np.array(spheres.feats)
    feats[..., 32:53] = rng.normal(size=feats[..., 32:53].shape)
    return spheres.replace(feats=jnp.asarray(np.where(np.asarray(spheres.mask)[..., None], feats, 0)))


def test_training_split_adds_a_gamma_weighted_centre_and_four_triangles_per_quad(spheres):
    from trellis_jax.representations.mesh.extract import _compact

    st = _random_weights(spheres)
    inf, tr, cube_gamma = jax.tree.map(np.asarray, _both_splits(st))
    K4 = inf.vertices.shape[1]
    assert tr.vertices.shape[1] == K4 + 3 * K4 // 4 and tr.faces.shape[1] == 2 * inf.faces.shape[1]
    for b, (centre, radius) in enumerate(SPHERES):
        n_quads = inf.face_mask[b].sum() // 2
        assert n_quads > 0 and tr.face_mask[b].sum() == 4 * n_quads  # 4 triangles per quad instead of 2
        assert tr.vertex_mask[b].sum() == inf.vertex_mask[b].sum() + n_quads  # one centre per quad
        np.testing.assert_array_equal(tr.vertices[b, :K4], inf.vertices[b])  # dual vertices unchanged
        # Each quad's fan (q_i, q_i+1, c) shares c; c is the γ-weighted mean of the quad's two diagonals.
        fan = tr.faces[b].reshape(-1, 4, 3)[tr.face_mask[b].reshape(-1, 4)[:, 0]]
        assert (fan[:, :, 2] == fan[:, :1, 2]).all() and (fan[:, :, 2] >= K4).all()
        q = fan[:, :, 0]
        np.testing.assert_array_equal(fan[:, :, 1], np.roll(q, -1, 1))
        assert np.ptp(cube_gamma[b]) > 0.1  # random weights: the γ weighting matters
        g = cube_gamma[b][q // 4]
        g02, g13 = g[:, 0] * g[:, 2], g[:, 1] * g[:, 3]
        v = tr.vertices[b]
        want = (g02[:, None] * (v[q[:, 0]] + v[q[:, 2]]) / 2 + g13[:, None] * (v[q[:, 1]] + v[q[:, 3]]) / 2) / (g02 + g13 + 1e-8)[:, None]
        np.testing.assert_allclose(v[fan[:, 0, 2]], want, atol=1e-6)
        cw = tr.colors[b]
        want_c = (g02[:, None] * (cw[q[:, 0]] + cw[q[:, 2]]) / 2 + g13[:, None] * (cw[q[:, 1]] + cw[q[:, 3]]) / 2) / (g02 + g13 + 1e-8)[:, None]
        np.testing.assert_allclose(cw[fan[:, 0, 2]], want_c, atol=1e-6)
    # Still a closed, outward sphere (χ unchanged: +1 vertex, +4 edges, +2 faces per quad); plain weights
    # here, so that the dual vertices lie close to the sphere.
    tr = _both_splits(spheres)[1]
    for b, (centre, radius) in enumerate(SPHERES):
        one = jax.tree.map(lambda x: x[b], tr)
        verts, faces, attrs, nv, nf = _compact(one, tr.vertex_mask.shape[1], tr.face_mask.shape[1])
        _check_closed_sphere(np.asarray(verts)[: int(nv)], np.asarray(faces)[: int(nf)], np.asarray(attrs)[: int(nv)],
                             np.asarray(centre), radius)


def test_training_split_gives_gamma_a_gradient(spheres):
    """The inference split uses γ only in a comparison (no gradient); the centre vertex depends on it smoothly."""
    st = _random_weights(spheres)
    probe = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7 * spheres.capacity, 3)), jnp.float32)

    def loss(f, training):
        dm = _both_splits(st.replace(feats=f))[int(training)]
        v = dm.vertices
        return jnp.sum(jnp.where(dm.vertex_mask[..., None], v * probe[:, : v.shape[1]], 0.0))

    g_tr = np.asarray(jax.grad(loss)(st.feats, True))
    g_inf = np.asarray(jax.grad(loss)(st.feats, False))
    assert np.isfinite(g_tr).all() and np.abs(g_tr[..., 52]).max() > 1e-4
    assert not np.any(g_inf[..., 52])
    for cols in (slice(0, 8), slice(8, 32), slice(32, 52)):
        assert np.abs(g_tr[..., cols]).max() > 1e-4
