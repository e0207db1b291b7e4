"""Euler/CFG sampler (hand-checked), the composed jitted pipeline, multi-image modes and editing."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trellis_jax.models.registry import dummy_inputs
from trellis_jax.sampling.editing import Editor, RePaintConfig, repaint_schedule
from trellis_jax.sampling.euler import SamplerConfig, guided_steps, num_evaluations, renoise, sample_euler, timesteps
from trellis_jax.sampling.pipeline import EmptyStructureError, TrellisPipeline, occupancy_to_coords, pad_rows, stage2_size_index
from trellis_jax.sparse.tensor import CapacityError
from trellis_jax.config_loader import load_config
from trellis_jax.models.registry import model_from_config


def test_reference_worked_example_counts_44_evaluations():
    cfg = SamplerConfig(steps=25, cfg_strength=5.0, cfg_interval=(0.5, 1.0), rescale_t=3.0)
    g = guided_steps(cfg)
    assert g.sum() == 19 and g[:19].all() and not g[19:].any()
    assert num_evaluations(cfg) == 44
    t = timesteps(25, 3.0)
    assert t[0] == 1.0 and t[-1] == 0.0 and np.all(np.diff(t) < 0)
    np.testing.assert_allclose(t[1], 3 * 0.96 / (1 + 2 * 0.96))
    calls = []

    def counting(x, t, c):
        jax.debug.callback(lambda n: calls.append(int(n)), x.shape[0])
        return jnp.zeros_like(x)

    sample_euler(counting, jnp.ones((3, 2)), jnp.ones((3, 4)), jnp.zeros((3, 4)), cfg)
    assert len(calls) == 25 and sum(calls) // 3 == 44  # guided steps evaluate a doubled batch once


def test_constant_and_linear_velocity_fields_have_closed_forms():
    cfg = SamplerConfig(steps=10, cfg_strength=2.0, cfg_interval=(0.0, 1.0), rescale_t=1.0)
    # v = c for cond, 0 for uncond: guided v = 3c; x0 = x1 − 3c
    x0 = sample_euler(lambda x, t, c: c, jnp.ones((2, 3)), jnp.full((2, 3), 0.5), jnp.zeros((2, 3)), cfg)
    np.testing.assert_allclose(np.asarray(x0), -0.5, atol=1e-6)
    # rectified flow to a point target: v = (x − target)/t integrates exactly with Euler (straight paths)
    target = jnp.array([[2.0, -1.0]])
    x0 = sample_euler(lambda x, t, c: (x - target) / t[:, None], jnp.array([[0.3, 0.7]]), jnp.zeros((1, 1)), None,
                      SamplerConfig(steps=7, cfg_strength=0.0, rescale_t=3.0))
    np.testing.assert_allclose(np.asarray(x0), np.asarray(target), atol=1e-5)


def test_zero_guidance_equals_unguided_and_multi_image_modes():
    f = lambda x, t, c: x * c.mean(-1, keepdims=True) + t[:, None]
    x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
    c = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    a = sample_euler(f, x1, c, jnp.zeros_like(c), SamplerConfig(steps=5, cfg_strength=0.0))
    b = sample_euler(f, x1, c, None, SamplerConfig(steps=5))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # K identical images: both multi-image modes reduce to single-image sampling
    ck = jnp.stack([c, c, c], 1)
    for mode in ("stochastic", "multidiffusion"):
        cfg = SamplerConfig(steps=5, cfg_strength=2.0, multi_image_mode=mode)
        m = sample_euler(f, x1, ck, jnp.zeros_like(c), cfg, multi_image=True)
        s = sample_euler(f, x1, c, jnp.zeros_like(c), cfg)
        np.testing.assert_allclose(np.asarray(m), np.asarray(s), atol=1e-5)
    # stochastic mode uses image i mod K at step i
    seen = []
    g = lambda x, t, c: (jax.debug.callback(lambda v: seen.append(float(v)), c[0, 0]), jnp.zeros_like(x))[1]
    sample_euler(g, x1, jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3), None, SamplerConfig(steps=4), multi_image=True)
    assert seen == [0.0, 3.0, 0.0, 3.0]


def test_renoise_preserves_the_forward_marginal():
    x0 = jnp.full((20000,), 2.0)
    eps = jax.random.normal(jax.random.PRNGKey(0), (2, 20000))
    x_s = 0.7 * x0 + (1e-5 + (1 - 1e-5) * 0.3) * eps[0]
    x_t = renoise(x_s[None], jnp.array([0.3]), jnp.array([0.8]), eps[1][None])[0]
    np.testing.assert_allclose(float(x_t.mean()), 0.2 * 2.0, atol=0.02)
    np.testing.assert_allclose(float(x_t.std()), 1e-5 + (1 - 1e-5) * 0.8, atol=0.02)


def test_occupancy_to_coords_order_and_overflow():
    occ = np.zeros((2, 4, 4, 4), bool)
    occ[0, 3, 0, 1] = occ[0, 0, 2, 2] = occ[0, 0, 2, 3] = True
    occ[1] = True
    coords, mask, counts = occupancy_to_coords(jnp.asarray(occ), 8)
    assert counts.tolist() == [3, 64]
    np.testing.assert_array_equal(np.asarray(coords[0, :3]), np.argwhere(occ[0]))
    assert np.asarray(mask).sum(1).tolist() == [3, 8]


class StubStructureDecoder(nn.Module):
    """Stand-in SS decoder: a spherical shell whose radius depends on the latent (sparse, deterministic)."""

    @nn.compact
    def __call__(self, z):
        r = 4.5 + 1.5 * jnp.tanh(z.mean(axis=(1, 2, 3, 4)))
        g = jnp.stack(jnp.meshgrid(*[jnp.arange(32)] * 3, indexing="ij"), -1) - 15.5
        d = jnp.linalg.norm(g, axis=-1)
        return (1.0 - jnp.abs(d[None] - r[:, None, None, None]))[..., None]


def _tiny(spec, seed, **clone):
    m = model_from_config(load_config(spec))
    if clone:
        m = m.clone(**clone)
    p = nn.meta.unbox(m.init(jax.random.PRNGKey(seed), *dummy_inputs(m)))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    return m, jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def pipe():
    models = {
        "sparse_structure_flow_model": _tiny("experiments/models/ss_flow.py:tiny", 0),
        "sparse_structure_decoder": (StubStructureDecoder(), {}),
        "slat_flow_model": _tiny("experiments/models/slat_flow.py:tiny", 1, resolution=32),
        "slat_decoder_gs": _tiny("experiments/models/slat_vae.py:tiny_dec_gs", 2, resolution=32),
    }
    return TrellisPipeline(models, SamplerConfig(steps=2, cfg_strength=3.0), SamplerConfig(steps=2, cfg_strength=3.0), capacity=1024,
                           num_stage2_sizes=2)  # stage 2 compiled for 512 and 1024 rows


@pytest.fixture(scope="module")
def sampled(pipe):
    cond = jax.random.normal(jax.random.PRNGKey(7), (2, 5, 32))
    return cond, pipe.sample(cond, jnp.zeros_like(cond), [11, 12])


def test_pipeline_samples_a_batch_reproducibly_in_one_call(pipe, sampled):
    cond, out = sampled
    n = np.asarray(out["num_voxels"])
    assert (n > 0).all() and (n <= 1024).all() and out["ok"].all()
    mask = np.asarray(out["mask"])
    assert mask.sum(1).tolist() == n.tolist()
    g = out["gaussian"]
    assert g.xyz.shape == (2, 1024 * 4, 3) and np.asarray(g.mask).sum() == 4 * n.sum()
    assert np.isfinite(np.asarray(g.xyz)[np.asarray(g.mask)]).all()
    lat = np.asarray(out["latents"])
    assert (lat[~mask] == 0).all() and np.abs(lat[mask]).sum() > 0
    # same seed -> same sample, independent of batch position
    again = pipe.sample(cond[::-1], jnp.zeros_like(cond), [12, 11])
    np.testing.assert_array_equal(np.asarray(again["latents"][1]), lat[0])


def test_stage2_runs_at_the_smallest_size_holding_the_batch(pipe, sampled):
    """Stage 2 + decoder run on the first `stage2_rows` rows only (chosen from the sampled voxel
    counts) and give the same sample as running them on the whole capacity."""
    assert pipe.stage2_sizes() == (512, 1024)
    assert TrellisPipeline(pipe.models, capacity=1024).stage2_sizes() == (256, 512, 1024)
    assert TrellisPipeline(pipe.models, capacity=1000, num_stage2_sizes=3, min_stage2_size=300).stage2_sizes() == (500, 1000)
    assert TrellisPipeline(pipe.models, capacity=1024, num_stage2_sizes=1).stage2_sizes() == (1024,)
    assert [int(stage2_size_index((256, 512, 1024), jnp.int32(n))) for n in (1, 256, 257, 1024, 5000)] == [0, 0, 1, 2, 2]
    padded = pad_rows({"a": jnp.ones((2, 3)), "g": jnp.ones((2, 12, 3))}, 3, 5)
    assert padded["a"].shape == (2, 5) and padded["g"].shape == (2, 20, 3) and float(padded["g"][:, 12:].sum()) == 0
    cond, ref = sampled  # capacity 1024; these shells have 512 < n <= 1024 voxels: ran on all 1024 rows
    n = np.asarray(ref["num_voxels"])
    assert int(ref["stage2_rows"]) == 1024 and 512 < n.max() <= 1024
    big = TrellisPipeline(pipe.models, pipe.ss_sampler, pipe.slat_sampler, capacity=2048, min_stage2_size=1024)
    out = big.sample(cond, jnp.zeros_like(cond), [11, 12])
    assert big.stage2_sizes() == (1024, 2048) and int(out["stage2_rows"]) == 1024
    np.testing.assert_array_equal(np.asarray(out["num_voxels"]), n)
    assert out["latents"].shape == (2, 2048, 8) and out["gaussian"].xyz.shape == (2, 2048 * 4, 3)
    assert not np.asarray(out["latents"])[:, 1024:].any() and not np.asarray(out["gaussian"].mask)[:, 1024 * 4:].any()
    for key in ("coords", "mask", "latents"):
        np.testing.assert_allclose(np.asarray(out[key])[:, :1024], np.asarray(ref[key]), atol=2e-5)
    m = np.asarray(ref["gaussian"].mask)
    np.testing.assert_array_equal(np.asarray(out["gaussian"].mask)[:, :4096], m)
    np.testing.assert_allclose(np.asarray(out["gaussian"].xyz)[:, :4096][m], np.asarray(ref["gaussian"].xyz)[m], atol=2e-5)


def test_overflow_and_empty_structures_are_reported(pipe, sampled):
    cond, _ = sampled
    small = TrellisPipeline(pipe.models, pipe.ss_sampler, pipe.slat_sampler, capacity=32)
    with pytest.raises(CapacityError, match="capacity 32"):
        small.sample(cond, jnp.zeros_like(cond), [11, 12])
    flagged = small.sample(cond, jnp.zeros_like(cond), [11, 12], on_error="flag")
    assert not flagged["ok"].any()
    dec_m, dec_p = _tiny("experiments/models/ss_vae.py:tiny_dec", 3)
    dec_p = jax.tree_util.tree_map_with_path(
        lambda path, a: (jnp.full_like(a, -5.0) if "out_layer_2" in str(path) and "bias" in str(path) else
                         jnp.zeros_like(a) if "out_layer_2" in str(path) else a), dec_p)
    empty = TrellisPipeline({**pipe.models, "sparse_structure_decoder": (dec_m, dec_p)}, pipe.ss_sampler, pipe.slat_sampler, capacity=64)
    with pytest.raises(EmptyStructureError, match=r"samples \[0, 1\]"):
        empty.sample(cond, jnp.zeros_like(cond), [1, 2])


def test_repaint_schedule_and_region_edit_keeps_the_outside(pipe, sampled):
    assert repaint_schedule(3, RePaintConfig(1, 1)) == [(0, 1), (1, 2), (2, 3)]
    sched = repaint_schedule(4, RePaintConfig(2, 2))
    assert sched[:4] == [(0, 1), (1, 2), (2, 1), (1, 0)] and sched[-1] == (3, 4)
    cond, out = sampled
    ed = Editor(pipe, RePaintConfig(1, 2))
    e = ed.edit_region(out["ss_latent"], out["coords"], out["mask"], out["latents"], (0, 0, 0), (16, 32, 32),
                       cond, jnp.zeros_like(cond), [3, 4], resolution=32)
    old_c, old_m, old_l = (np.asarray(out[k]) for k in ("coords", "mask", "latents"))
    new_c, new_m, new_l, known = (np.asarray(e[k]) for k in ("coords", "mask", "latents", "known"))
    for b in range(2):
        old = {tuple(c): l for c, l in zip(old_c[b][old_m[b]], old_l[b][old_m[b]])}
        new = {tuple(c): (l, k) for c, l, k in zip(new_c[b][new_m[b]], new_l[b][new_m[b]], known[b][new_m[b]])}
        outside_old = {c for c in old if c[0] >= 16}
        assert outside_old == {c for c in new if c[0] >= 16}  # structure outside the box kept exactly
        for c in outside_old:
            assert new[c][1]
            np.testing.assert_allclose(new[c][0], old[c], rtol=1e-5, atol=1e-5)  # latents kept
        assert not any(k for c, (_, k) in new.items() if c[0] < 16)
    v = ed.variation(out["coords"], out["mask"], cond, jnp.zeros_like(cond), [5, 6], resolution=32)
    np.testing.assert_array_equal(np.asarray(v["coords"]), old_c)
    assert np.abs(np.asarray(v["latents"]) - old_l).max() > 1e-3


def test_guidance_interval_ends_fall_as_in_the_reference():
    """The reference tests the interval on float64 linspace times; 1 − i/steps rounds differently at
    some ends (12 steps, rescale 5: t'_10 = 0.5000000000000001 is guided; 33 steps, rescale 2:
    t'_22 = 0.4999999999999999 is not)."""
    g = guided_steps(SamplerConfig(steps=12, cfg_strength=3.0, cfg_interval=(0.5, 1.0), rescale_t=5.0))
    assert g[:11].all() and not g[11:].any()
    g = guided_steps(SamplerConfig(steps=33, cfg_strength=3.0, cfg_interval=(0.5, 1.0), rescale_t=2.0))
    assert g[:22].all() and not g[22:].any()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        timesteps(0, 3.0)


def test_multidiffusion_with_guidance_has_a_closed_form():
    """Constant velocities v(c) = c: guided steps give (1 + w)·mean_k c_k − w·c_neg, others mean_k c_k."""
    cfg = SamplerConfig(steps=6, cfg_strength=2.0, cfg_interval=(0.5, 1.0), rescale_t=3.0, multi_image_mode="multidiffusion")
    ck = jnp.asarray([[[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]])  # [B=1, K=3, 2]
    neg = jnp.asarray([[0.5, -1.0]])
    x0 = sample_euler(lambda x, t, c: c, jnp.zeros((1, 2)), ck, neg, cfg, multi_image=True)
    ts, g = timesteps(6, 3.0), guided_steps(cfg)
    mean = np.asarray(ck).mean(1)
    want = -sum((ts[i] - ts[i + 1]) * ((3.0 * mean - 2.0 * np.asarray(neg)) if g[i] else mean) for i in range(6))
    np.testing.assert_allclose(np.asarray(x0), want, rtol=1e-5)


def _seed_noise(pipe, seeds, counts):
    """The noise `sample` draws from seeds (stage 1 dense, stage 2 packed rows of the sampled voxels)."""
    flow_s, flow_l = pipe.models["sparse_structure_flow_model"][0], pipe.models["slat_flow_model"][0]
    keys = [jax.random.PRNGKey(s) for s in seeds]
    ss = np.stack([jax.random.normal(jax.random.fold_in(k, 1), (flow_s.resolution,) * 3 + (flow_s.in_channels,)) for k in keys])
    sl = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(k, 2), (pipe.capacity, flow_l.in_channels)))[:n]
                         for k, n in zip(keys, counts)])
    return ss, sl


def test_given_noise_reproduces_the_seeded_sample(pipe, sampled):
    """Noise given through the public API (stage 1 dense, stage 2 packed in voxel order) gives the
    sample the seeds give; a batch-1 negative condition is broadcast; a row-count mismatch is an error."""
    cond, ref = sampled
    ss, sl = _seed_noise(pipe, [11, 12], np.asarray(ref["num_voxels"]))
    out = pipe.sample(cond, jnp.zeros_like(cond[:1]), noise_ss=ss, noise_slat=sl)
    np.testing.assert_array_equal(np.asarray(out["num_voxels"]), np.asarray(ref["num_voxels"]))
    for key in ("ss_latent", "coords", "latents"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), atol=1e-6)
    # the second sample's packed rows start after the first sample's voxels
    swapped = pipe.sample(cond[::-1], jnp.zeros_like(cond), noise_ss=ss[::-1],
                          noise_slat=_seed_noise(pipe, [12, 11], np.asarray(ref["num_voxels"])[::-1])[1])
    np.testing.assert_allclose(np.asarray(swapped["latents"][0]), np.asarray(ref["latents"][1]), atol=1e-6)
    with pytest.raises(ValueError, match=f"noise_slat has {len(sl) - 1} rows"):
        pipe.sample(cond, jnp.zeros_like(cond), noise_ss=ss, noise_slat=sl[:-1])


def test_pipeline_is_immutable_and_with_samplers_makes_a_new_one(pipe):
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipe.ss_sampler = SamplerConfig(steps=1)
    other = pipe.with_samplers(SamplerConfig(steps=1), capacity=512)
    assert other is not pipe and other.ss_sampler.steps == 1 and other.capacity == 512
    assert pipe.ss_sampler.steps == 2 and other.slat_sampler == pipe.slat_sampler
