"""Key mapping and layout transforms as pure functions, and every released network's parameter tree
against the official key/shape tables rebuilt from the spec (tests/spec_tables.py)."""
import numpy as np
import pytest

from spec_tables import SPEC_TABLES, count
from trellis_jax.checkpoints import keymap
from trellis_jax.checkpoints.official import param_template
from trellis_jax.config_loader import all_model_specs, load_config
from trellis_jax.models.registry import model_from_config


@pytest.mark.parametrize("key, path", [
    ("blocks.3.mlp.mlp.0.weight", (("blocks_3", "mlp", "mlp_0"), "weight")),
    ("t_embedder.mlp.2.bias", (("t_embedder", "mlp_2"), "bias")),
    ("input_blocks.1.conv1.conv.weight", (("input_blocks_1", "conv1", "conv"), "weight")),
    ("upsample.0.out_layers.3.conv.bias", (("upsample_0", "out_layers_3", "conv"), "bias")),
    ("blocks.0.adaLN_modulation.1.weight", (("blocks_0", "adaLN_modulation_1"), "weight")),
    ("pos_emb", ((), "pos_emb")),
])
def test_key_and_module_path_are_inverse(key, path):
    assert keymap.key_to_module_path(key) == path
    assert keymap.module_path_to_key(*path) == key


def test_leaf_resolution_uses_the_template():
    template = {("blocks_0", "mlp", "mlp_0", "kernel"): (4, 8), ("blocks_0", "norm2", "scale"): (4,),
                ("input_blocks_0", "conv1", "kernel"): (27, 2, 3), ("blocks_2", "conv", "kernel"): (2, 2, 2, 4, 8),
                ("blocks_0", "self_attn", "q_rms_norm", "gamma"): (2, 2), ("pos_emb",): (64, 4)}
    r = lambda k: keymap.resolve_flax_leaf(k, template)
    assert r("blocks.0.mlp.mlp.0.weight") == ("blocks_0", "mlp", "mlp_0", "kernel")
    assert r("blocks.0.norm2.weight") == ("blocks_0", "norm2", "scale")
    assert r("input_blocks.0.conv1.conv.weight") == ("input_blocks_0", "conv1", "kernel")  # sparse wrapper dropped
    assert r("blocks.2.conv.weight") == ("blocks_2", "conv", "kernel")  # dense conv named `conv` kept
    assert r("blocks.0.self_attn.q_rms_norm.gamma") == ("blocks_0", "self_attn", "q_rms_norm", "gamma")
    assert r("pos_emb") == ("pos_emb",)
    assert r("blocks.0.norm9.weight") is None
    shapes = dict(template)
    for p, s in template.items():
        k = keymap.official_key(shapes, p)
        assert r(k) == p, (k, p)


def test_layout_transforms_match_torch_semantics_and_invert_exactly():
    rng = np.random.default_rng(0)
    lin = rng.normal(size=(5, 3)).astype(np.float32)  # torch Linear [out, in]
    x = rng.normal(size=3).astype(np.float32)
    k = keymap.to_flax(lin, ("l", "kernel"), (3, 5))
    np.testing.assert_allclose(x @ k, lin @ x, rtol=1e-6)
    dense = rng.normal(size=(4, 2, 3, 3, 3)).astype(np.float32)  # [O, I, kx, ky, kz]
    kd = keymap.to_flax(dense, ("c", "kernel"), (3, 3, 3, 2, 4))
    assert kd[1, 2, 0, 1, 3] == dense[3, 1, 1, 2, 0]
    sparse = rng.normal(size=(4, 3, 3, 3, 2)).astype(np.float32)  # spconv [O, kx, ky, kz, I]
    ks = keymap.to_flax(sparse, ("c", "kernel"), (27, 2, 4))
    assert ks[9 * 1 + 3 * 2 + 0, 1, 3] == sparse[3, 1, 2, 0, 1]  # offset index 9·r0 + 3·r1 + r2
    for a, p, s in ((lin, ("l", "kernel"), (3, 5)), (dense, ("c", "kernel"), (3, 3, 3, 2, 4)), (sparse, ("c", "kernel"), (27, 2, 4))):
        f = keymap.to_flax(a, p, s)
        assert keymap.official_shape(p, f.shape) == a.shape
        np.testing.assert_array_equal(keymap.from_flax(f, p), a)
    g = rng.normal(size=(2, 4)).astype(np.float32)
    assert keymap.to_flax(g, ("a", "gamma"), (2, 4)) is not None and np.array_equal(keymap.to_flax(g, ("a", "gamma"), (2, 4)), g)
    with pytest.raises(ValueError):
        keymap.to_flax(rng.normal(size=(4, 3, 3, 3)), ("c", "kernel"), (27, 3, 4))


def _official_table(spec):
    cfg = load_config(spec)
    t = param_template(model_from_config(cfg))
    shapes = {p: tuple(v.shape) for p, v in t.items()}
    return cfg.checkpoint, {keymap.official_key(shapes, p): keymap.official_shape(p, s) for p, s in shapes.items()}


@pytest.mark.parametrize("spec", all_model_specs())
def test_released_network_matches_the_official_key_and_shape_table(spec):
    name, ours = _official_table(spec)
    expected = SPEC_TABLES[name]()
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert count(ours) == count(expected)


def test_spec_tables_reproduce_the_published_counts():
    published = {"slat_enc_swin8_B_64l8_fp16": 85_817_104, "slat_dec_gs_swin8_B_64l8gs32_fp16": 85_369_120,
                 "slat_dec_rf_swin8_B_64l8r16_fp16": 85_369_024, "slat_dec_mesh_swin8_B_64l8m256c_fp16": 90_926_693,
                 "ss_flow_img_dit_L_16l8_fp16": 559_737_864, "slat_flow_img_dit_L_64l8p2_fp16": 600_432_520,
                 "slat_flow_txt_dit_XL_64l8p2_fp16": 1_073_414_408}
    assert {k: count(SPEC_TABLES[k]()) for k in published} == published
    millions = {"ss_enc_conv3d_16l8_fp16": 59.30, "ss_dec_conv3d_16l8_fp16": 73.67, "ss_flow_txt_dit_B_16l8_fp16": 159.87,
                "ss_flow_txt_dit_L_16l8_fp16": 547.15, "ss_flow_txt_dit_XL_16l8_fp16": 980.68,
                "slat_flow_txt_dit_B_64l8p2_fp16": 185.36, "slat_flow_txt_dit_L_64l8p2_fp16": 587.85}  # §1.1
    assert {k: round(count(SPEC_TABLES[k]()) / 1e6, 2) for k in millions} == millions


@pytest.mark.parametrize("spec, data_bytes", [  # §5.9: tensor bytes of the released files (header excluded)
    ("experiments/models/ss_vae.py:dec", 147_585_412),
    ("experiments/models/ss_flow.py:img_L", 1_130_721_312),
    ("experiments/models/slat_flow.py:img_L", 1_203_701_792),
    ("experiments/models/slat_vae.py:dec_mesh", 181_891_796),
])
def test_saved_dtypes_reproduce_the_released_file_sizes(spec, data_bytes):
    t = param_template(model_from_config(load_config(spec)))
    shapes = {p: tuple(v.shape) for p, v in t.items()}
    size = sum(int(np.prod(s)) * np.dtype(keymap.official_dtype(shapes, p, use_fp16=True)).itemsize for p, s in shapes.items())
    assert size == data_bytes
