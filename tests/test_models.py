"""Network-level checks: hand-computed pieces, zero-init outputs, equivariance, padding invariance,
finite gradients, bf16 vs fp32. (Exact released parameter counts and keys: test_checkpoints.py.)"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.models.registry import build_model, dummy_inputs
from trellis_jax.models.slat_flow import SparseResBlock3d
from trellis_jax.models.slat_gaussian_decoder import decode_gaussians, offset_perturbation
from trellis_jax.models.ss_flow import patchify, unpatchify
from trellis_jax.models.ss_vae import pixel_shuffle_3d
from trellis_jax.modules.embeddings import timestep_sinusoid
from trellis_jax.sparse import SparseTensor, kernel_offsets, neighbor_map, submanifold_conv3d
from trellis_jax.config_loader import load_config
from trellis_jax.models.registry import model_from_config


def _perturbed(module, seed=0, scale=0.05):
    p = nn.meta.unbox(module.init(jax.random.PRNGKey(seed), *dummy_inputs(module)))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def _voxels(rng, counts, res, capacity, channels):
    coords = [np.unique(rng.integers(0, res, (n * 2, 3)), axis=0)[:n] for n in counts]
    return SparseTensor.from_samples(coords, [rng.normal(size=(len(c), channels)).astype(np.float32) for c in coords],
                                     capacity=capacity, resolution=res)


def test_pixel_shuffle_and_patchify_orders():
    x = np.zeros((1, 1, 1, 1, 16), np.float32)
    x[0, 0, 0, 0] = np.arange(16)
    y = np.asarray(pixel_shuffle_3d(jnp.asarray(x)))  # 2 output channels
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    assert y[0, i, j, k, c] == c * 8 + i * 4 + j * 2 + k
    v = np.zeros((1, 16, 16, 16, 8), np.float32)
    v[0, 3, 5, 7] = np.arange(8)
    tok = np.asarray(patchify(jnp.asarray(v), 1))
    assert np.nonzero(tok.any(-1))[1].tolist() == [256 * 3 + 16 * 5 + 7]
    rnd = np.random.default_rng(0).normal(size=(2, 8, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(unpatchify(patchify(jnp.asarray(rnd), 2), 2, 8)), rnd)
    t2 = np.asarray(patchify(jnp.asarray(rnd), 2))  # channel c·8 + (i·4 + j·2 + k) of coarse voxel (0,0,0)
    assert t2[0, 0, 1 * 8 + 5] == rnd[0, 1, 0, 1, 1]


def test_timestep_embedding_is_cos_first():
    e = np.asarray(timestep_sinusoid(jnp.array([0.0, 500.0])))
    assert e.shape == (2, 256)
    np.testing.assert_allclose(e[0, :128], 1.0) and np.testing.assert_allclose(e[0, 128:], 0.0)
    k = 3
    f = math.exp(-math.log(10000) * k / 128)
    np.testing.assert_allclose(e[1, k], math.cos(500 * f), atol=5e-5)  # f32 argument rounding
    np.testing.assert_allclose(e[1, 128 + k], math.sin(500 * f), atol=5e-5)


def test_gaussian_activations_and_offset_perturbation():
    pert = offset_perturbation(32, 1.5)
    np.testing.assert_allclose(pert[0], np.arctanh(-1 / 1.5), rtol=1e-6)
    np.testing.assert_allclose(pert[1], np.arctanh((2 * np.array([1 / 32, 0.5, 1 / 3]) - 1) / 1.5), rtol=1e-6)
    np.testing.assert_allclose(pert[3], np.arctanh((2 * np.array([3 / 32, 0.75, 1 / 9]) - 1) / 1.5), rtol=1e-6)
    rep = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}, "perturb_offset": True,
           "voxel_size": 1.5, "num_gaussians": 2, "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1,
           "scaling_activation": "softplus"}
    x = SparseTensor(jnp.array([[[10, 20, 30]]], jnp.int32), jnp.zeros((1, 1, 8)), jnp.ones((1, 1), bool), 64)
    raw = np.zeros((1, 1, 28), np.float32)
    raw[0, 0, 0:3] = [0.5, 0.0, -0.5]  # _xyz of gaussian 0
    raw[0, 0, 19] = 2.0                 # rotation block starts at 18: gaussian 0, x component (times lr 0.1)
    raw[0, 0, 27] = 1.0                 # opacity of gaussian 1
    g = decode_gaussians(jnp.asarray(raw), x, jnp.zeros((2, 3)), rep)
    centre = (np.array([10, 20, 30]) + 0.5) / 64 - 0.5
    np.testing.assert_allclose(np.asarray(g.xyz[0, 0]), centre + np.tanh([0.5, 0.0, -0.5]) * 0.75 / 64, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g.scaling[0, 1]), np.sqrt(0.004**2 + 9e-4**2), rtol=1e-5)
    q = np.array([1.0, 0.2, 0, 0]) / np.linalg.norm([1.0, 0.2])
    np.testing.assert_allclose(np.asarray(g.rotation[0, 0]), q, rtol=1e-6)
    np.testing.assert_allclose(float(g.opacity[0, 0]), 0.1, rtol=1e-5)
    np.testing.assert_allclose(float(g.opacity[0, 1]), 1 / (1 + math.exp(-(1.0 + math.log(0.1 / 0.9)))), rtol=1e-5)


def test_res_block_matches_the_reference_formula_scale_before_shift():
    rng = np.random.default_rng(0)
    x = _voxels(rng, [60], 8, 64, 6)
    nbr = neighbor_map(x.coords, x.mask)
    emb = jnp.asarray(rng.normal(size=(1, 5)).astype(np.float32))
    block = SparseResBlock3d(4)
    p = nn.meta.unbox(block.init(jax.random.PRNGKey(0), x.feats, x.mask, nbr, emb))
    p = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), p)
    out = np.asarray(block.apply(p, x.feats, x.mask, nbr, emb))
    q = p["params"]
    silu = lambda a: a / (1 + np.exp(-a))
    def ln(a, s=None, b=None):
        a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
        return a if s is None else a * s + b
    mod = silu(np.asarray(emb)) @ q["emb_layers_1"]["kernel"] + q["emb_layers_1"]["bias"]
    scale, shift = mod[:, :4], mod[:, 4:]  # scale FIRST
    f = np.asarray(x.feats)
    h = silu(ln(f, q["norm1"]["scale"], q["norm1"]["bias"]))
    h = np.asarray(submanifold_conv3d(jnp.asarray(h), nbr, q["conv1"]["kernel"], q["conv1"]["bias"], x.mask))
    h = silu(ln(h) * (1 + scale[:, None]) + shift[:, None])
    h = np.asarray(submanifold_conv3d(jnp.asarray(h, jnp.float32), nbr, q["conv2"]["kernel"], q["conv2"]["bias"], x.mask))
    ref = h + f @ q["skip_connection"]["kernel"] + q["skip_connection"]["bias"]
    m = np.asarray(x.mask[0])
    np.testing.assert_allclose(out[0][m], ref[0][m], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def gl():
    cfg = load_config("experiments/models/slat_flow.py:tiny")
    m = model_from_config(cfg).clone(resolution=16)
    return m, _perturbed(m, 3), jax.jit(m.apply)


def test_flow_models_start_at_zero_velocity():
    gs = model_from_config(load_config("experiments/models/ss_flow.py:tiny"))
    p = nn.meta.unbox(gs.init(jax.random.PRNGKey(0), *dummy_inputs(gs)))
    r = gs.resolution
    x = jax.random.normal(jax.random.PRNGKey(1), (1, r, r, r, 8))
    assert float(jnp.abs(gs.apply(p, x, jnp.array([0.5]), jnp.ones((1, 3, 32)))).max()) == 0.0


def test_slat_flow_is_row_permutation_and_padding_invariant(gl):
    m, p, apply = gl
    rng = np.random.default_rng(1)
    x = _voxels(rng, [120, 70], 16, 128, 8)
    t, cond = jnp.array([0.3, 0.8]), jnp.asarray(rng.normal(size=(2, 4, 32)).astype(np.float32))
    out = np.asarray(apply(p, x, t, cond).feats)
    assert np.isfinite(out).all() and (out[1, 70:] == 0).all()
    perm = np.concatenate([rng.permutation(120), np.arange(120, 128)])
    xp = SparseTensor(x.coords[:, perm], x.feats[:, perm], x.mask[:, perm], 16)
    outp = np.asarray(apply(p, xp, t, cond).feats)
    np.testing.assert_allclose(outp[0], out[0][perm], atol=2e-5)
    big = SparseTensor(jnp.pad(x.coords, ((0, 0), (0, 64), (0, 0))), jnp.pad(x.feats, ((0, 0), (0, 64), (0, 0))),
                       jnp.pad(x.mask, ((0, 0), (0, 64))), 16)
    np.testing.assert_allclose(np.asarray(m.apply(p, big, t, cond).feats)[:, :128], out, atol=2e-5)
    single = SparseTensor(x.coords[1:], x.feats[1:], x.mask[1:], 16)
    np.testing.assert_allclose(np.asarray(m.apply(p, single, t[1:], cond[1:]).feats)[0], out[1], atol=2e-5)


@pytest.mark.parametrize("counts", [[20, 9], [120, 70]], ids=["tokens_fit_the_prefix", "tokens_overflow_it"])
def test_slat_flow_prefix_blocks_equal_full_capacity_blocks(gl, counts):
    """token_prefix_fraction: the blocks run on the first L/4 coarse rows when every token lies there
    (few voxels in a large capacity) and on all L rows otherwise; values and gradients are those of the
    blocks on all rows."""
    m, p, _ = gl
    rng = np.random.default_rng(12)
    x = _voxels(rng, counts, 16, 256, 8)
    t, cond = jnp.array([0.3, 0.8]), jnp.asarray(rng.normal(size=(2, 4, 32)).astype(np.float32))
    coarse = max(len(np.unique(np.asarray(c)[np.asarray(k)] // 2, axis=0)) for c, k in zip(x.coords, x.mask))
    assert (coarse <= 256 // 4) == (counts[0] == 20)
    full = m.clone(token_prefix_fraction=1)
    assert m.token_prefix_fraction == 4
    loss = lambda model: jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(p, x, t, cond).feats ** 2)))
    (v, g), (v_full, g_full) = loss(m)(p), loss(full)(p)
    np.testing.assert_allclose(float(v), float(v_full), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_gradients_are_finite_and_padding_gets_none(gl):
    m, p, _ = gl
    rng = np.random.default_rng(2)
    x = _voxels(rng, [50, 20], 16, 64, 8)

    def loss(p, feats):
        return jnp.sum(m.apply(p, SparseTensor(x.coords, feats, x.mask, 16), jnp.array([0.2, 0.6]), jnp.ones((2, 4, 32))).feats ** 2)

    zero = jax.tree.map(jnp.zeros_like, p)  # zero-initialised layers: exercise all-zero rows (QK norm of 0)
    for params in (p, zero):
        gp, gx = jax.grad(loss, argnums=(0, 1))(params, x.feats)
        assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(gp))
        assert np.isfinite(np.asarray(gx)).all()
    assert (np.asarray(gx)[1, 20:] == 0).all()


def test_slat_vae_nets_are_permutation_invariant():
    rng = np.random.default_rng(3)
    x = _voxels(rng, [90], 16, 96, 8)
    perm = np.concatenate([rng.permutation(90), np.arange(90, 96)])
    xp = SparseTensor(x.coords[:, perm], x.feats[:, perm], x.mask[:, perm], 16)
    dec = model_from_config(load_config("experiments/models/slat_vae.py:tiny_dec_gs")).clone(resolution=16, window_size=4)
    p = _perturbed(dec, 4)
    g, gp = dec.apply(p, x), dec.apply(p, xp)
    G = 4
    idx = (perm[:, None] * G + np.arange(G)).reshape(-1)
    np.testing.assert_allclose(np.asarray(gp.xyz[0]), np.asarray(g.xyz[0])[idx], atol=2e-5)
    np.testing.assert_allclose(np.asarray(gp.opacity[0]), np.asarray(g.opacity[0])[idx], atol=2e-5)


def test_bf16_forward_is_close_to_fp32(gl):
    m, p, apply = gl
    rng = np.random.default_rng(4)
    x = _voxels(rng, [100], 16, 128, 8)
    t, cond = jnp.array([0.4]), jnp.asarray(rng.normal(size=(1, 4, 32)).astype(np.float32))
    ref = np.asarray(apply(p, x, t, cond).feats)
    out = np.asarray(m.clone(dtype=jnp.bfloat16).apply(p, x, t, cond).feats, np.float32)
    err = np.abs(out - ref).max() / (np.abs(ref).max() + 1e-6)
    assert err < 0.05, err


def test_dense_attention_chunked_over_queries_equals_one_product(monkeypatch):
    """G_S self- and cross-attention past MAX_LOGITS run QUERY_CHUNK queries at a time (no L×L logits):
    forcing it on the tiny G_S (64 tokens, chunks of 24 incl. a ragged last one) changes nothing."""
    import trellis_jax.sparse.attention as attention

    m = model_from_config(load_config("experiments/models/ss_flow.py:tiny"))
    p = _perturbed(m)
    args = dummy_inputs(m)
    ref = jax.jit(m.apply)(p, *args)
    monkeypatch.setattr(attention, "MAX_LOGITS", 0)
    monkeypatch.setattr(attention, "QUERY_CHUNK", 24)
    out = jax.jit(m.apply)(p, *args)
    assert args[0].shape[1] ** 3 // m.patch_size**3 > 24
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6, rtol=1e-5)
    g = jax.grad(lambda p: jnp.sum(m.apply(p, *args) ** 2))(p)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
