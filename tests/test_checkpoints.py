"""Official checkpoint layout: exact parameter counts, key names, strict loading, save/load round trip,
and the check_fixture parity tool (on reference fixtures when present, and on fixtures made here)."""
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from trellis_jax.checkpoints import CheckpointError, CheckpointMismatchError, load_model, save_model
from trellis_jax.checkpoints.official import param_template
from trellis_jax.tools import check_fixture, param_count
from trellis_jax.tools.configs import load_config, model_from_config
from trellis_jax.tools.fixture_runner import run_fixture

REPO = Path(__file__).resolve().parents[1]
REFERENCE_FIXTURES = REPO.parent / "shared" / "reference" / "fixtures"

EXPECTED_COUNTS = {  # TRELLIS_SPEC §1.1 / Appendix A (paper Table 6 incl. the G_S pos_emb buffer)
    "slat_enc_swin8_B_64l8_fp16": 85_817_104,
    "slat_dec_gs_swin8_B_64l8gs32_fp16": 85_369_120,
    "slat_dec_rf_swin8_B_64l8r16_fp16": 85_369_024,
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": 90_926_693,
    "ss_flow_img_dit_L_16l8_fp16": 559_737_864,
    "slat_flow_img_dit_L_64l8p2_fp16": 600_432_520,
    "slat_flow_txt_dit_XL_64l8p2_fp16": 1_073_414_408,
    "ss_enc_conv3d_16l8_fp16": 59_298_192,
    "ss_dec_conv3d_16l8_fp16": 73_671_201,
    "ss_flow_txt_dit_B_16l8_fp16": 159_872_264,
    "ss_flow_txt_dit_L_16l8_fp16": 547_154_952,
    "ss_flow_txt_dit_XL_16l8_fp16": 980_683_528,
    "slat_flow_txt_dit_B_64l8p2_fp16": 185_364_616,
    "slat_flow_txt_dit_L_64l8p2_fp16": 587_849_608,
}
EXPECTED_TENSORS = {"ss_flow_img_dit_L_16l8_fp16": 489, "slat_flow_img_dit_L_64l8p2_fp16": 526,
                    "slat_flow_txt_dit_XL_64l8p2_fp16": 624, "slat_enc_swin8_B_64l8_fp16": 100,
                    "slat_dec_gs_swin8_B_64l8gs32_fp16": 101, "slat_dec_mesh_swin8_B_64l8m256c_fp16": 120,
                    "ss_dec_conv3d_16l8_fp16": 74}


def test_param_count_command_prints_exact_released_counts(capsys):
    assert param_count.main(["--all"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    counts = {l.split()[0]: int(l.split()[2].replace(",", "")) for l in lines}
    tensors = {l.split()[0]: int(l.split()[4]) for l in lines}
    assert counts == EXPECTED_COUNTS
    for k, v in EXPECTED_TENSORS.items():
        assert tensors[k] == v


def _official_keys(spec):
    from trellis_jax.checkpoints import keymap

    t = param_template(model_from_config(load_config(spec)))
    shapes = {k: v.shape for k, v in t.items()}
    return {keymap.official_key(shapes, p): shapes[p] for p in t}


def test_official_key_names_follow_the_released_tables():
    keys = _official_keys("experiments/models/slat_flow.py:img_L")
    assert keys["input_blocks.1.conv1.conv.weight"] == (27, 128, 1024)  # stored [1024,3,3,3,128]
    assert keys["out_blocks.0.norm1.weight"] == (2048,)
    assert keys["blocks.23.self_attn.q_rms_norm.gamma"] == (16, 64)
    assert keys["blocks.0.adaLN_modulation.1.weight"] == (1024, 6144)
    assert "t_embedder.mlp.2.bias" in keys and "out_layer.weight" in keys
    mesh = _official_keys("experiments/models/slat_vae.py:dec_mesh")
    assert mesh["upsample.0.skip_connection.conv.weight"] == (1, 768, 192)
    assert mesh["upsample.1.out_layers.1.weight"] == (96,) and mesh["upsample.0.act_layers.0.bias"] == (768,)
    ss = _official_keys("experiments/models/ss_vae.py:dec")
    assert ss["blocks.2.conv.weight"] == (3, 3, 3, 512, 1024) and ss["out_layer.0.weight"] == (32,)
    assert _official_keys("experiments/models/ss_flow.py:img_L")["pos_emb"] == (4096, 1024)
    assert _official_keys("experiments/models/slat_vae.py:dec_gs")["offset_perturbation"] == (32, 3)


TINY = ["ss_vae.py:tiny_enc", "ss_vae.py:tiny_dec", "ss_flow.py:tiny", "slat_flow.py:tiny",
        "slat_vae.py:tiny_enc", "slat_vae.py:tiny_dec_gs", "slat_vae.py:tiny_dec_rf", "slat_vae.py:tiny_dec_mesh"]


def _random_params(module, seed=0):
    t = param_template(module)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(t))
    flat = {p: 0.2 * jax.random.normal(k, s.shape) + (1.0 if p[-1] in ("scale", "gamma") else 0.0) for (p, s), k in zip(t.items(), keys)}
    return {"params": traverse_util.unflatten_dict(flat)}


def _fixture_inputs(module, rng):
    """Reference-layout inputs for a tiny model (channels-first dense, packed sparse)."""
    name = type(module).__name__
    if name == "SparseStructureEncoder":
        return {"x": (rng.uniform(size=(2, 1, 16, 16, 16)) > 0.7).astype(np.float32)}
    if name == "SparseStructureDecoder":
        return {"x": rng.normal(size=(2, 8, 4, 4, 4)).astype(np.float32)}
    if name == "SparseStructureFlowModel":
        r = module.resolution
        return {"x": rng.normal(size=(2, 8, r, r, r)).astype(np.float32), "t": np.array([0.3, 0.9], np.float32),
                "cond": rng.normal(size=(2, 5, module.cond_channels)).astype(np.float32)}
    n = [40, 25]
    res = module.resolution
    coords = np.concatenate([np.concatenate([np.full((k, 1), b), rng.choice(res**3 // 8, k, replace=False)[:, None]], 1) for b, k in enumerate(n)])
    xyz = np.stack(np.unravel_index(coords[:, 1], (res // 2,) * 3), 1) + res // 4
    coords = np.concatenate([coords[:, :1], xyz], 1).astype(np.int32)
    cin = module.in_channels if hasattr(module, "in_channels") and name != "SLatFlowModel" else 8
    io = {"coords": coords, "feats": rng.normal(size=(len(coords), cin)).astype(np.float32)}
    if name == "SLatFlowModel":
        io.update(t=np.array([0.2, 0.7], np.float32), cond=rng.normal(size=(2, 5, module.cond_channels)).astype(np.float32))
    return io


@pytest.fixture(scope="module")
def made_fixtures(tmp_path_factory):
    """One fixture directory per tiny network class, made with save_model + our own forward."""
    root = tmp_path_factory.mktemp("fixtures")
    rng = np.random.default_rng(0)
    dirs = []
    for spec in TINY:
        cfg = load_config(f"experiments/models/{spec}")
        module = model_from_config(cfg)
        if module.__class__.__name__ == "SparseStructureFlowModel":
            module = module.replace(resolution=8) if hasattr(module, "replace") else module
        params = _random_params(module)
        d = root / cfg.checkpoint
        args = cfg.args.to_dict()
        if cfg.class_name == "SparseStructureFlowModel":
            args["resolution"] = 8
            module = model_from_config(cfg).clone(resolution=8)
            params = _random_params(module)
        save_model(d / "model", cfg.class_name, args, params)
        io = _fixture_inputs(module, rng)
        outs = run_fixture(module, params, io)
        np.savez(d / "io.npz", **io, **outs)
        dirs.append(d)
    return dirs


def test_check_fixture_passes_on_saved_tiny_models(made_fixtures, capsys):
    assert check_fixture.main([str(d) for d in made_fixtures]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"check_fixture: {len(made_fixtures)} passed, 0 failed"
    assert any(" out_xyz max_abs_err=" in l for l in out) and any(" out_feats max_abs_err=" in l for l in out)


def test_check_fixture_fails_on_a_perturbed_weight(made_fixtures, tmp_path, capsys):
    src = next(d for d in made_fixtures if "slat_flow" in d.name)
    d = tmp_path / src.name
    shutil.copytree(src, d)
    t = load_file(str(d / "model.safetensors"))
    t["out_layer.bias"] = t["out_layer.bias"] + 0.01
    save_file(t, str(d / "model.safetensors"))
    assert check_fixture.main([str(d)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "check_fixture: 0 passed, 1 failed"


def test_reference_fixtures_when_present(capsys):
    dirs = sorted(p for p in REFERENCE_FIXTURES.glob("*") if (p / "io.npz").exists()) if REFERENCE_FIXTURES.exists() else []
    if not dirs:
        pytest.skip(f"no reference fixtures under {REFERENCE_FIXTURES}")
    assert check_fixture.main([str(d) for d in dirs]) == 0, capsys.readouterr().out


def test_fp16_round_trip_is_exact_and_uses_released_dtypes(tmp_path):
    cfg = load_config("experiments/models/slat_flow.py:tiny")
    args = dict(cfg.args.to_dict(), use_fp16=True)
    module = model_from_config(cfg)
    params = _random_params(module)
    save_model(tmp_path / "a", "SLatFlowModel", args, params)
    raw = load_file(str(tmp_path / "a.safetensors"))
    assert raw["input_blocks.0.conv1.conv.weight"].dtype == np.float16
    assert raw["blocks.0.self_attn.to_qkv.weight"].dtype == np.float16
    assert raw["blocks.0.norm2.weight"].dtype == np.float32 and raw["blocks.0.self_attn.q_rms_norm.gamma"].dtype == np.float32
    assert raw["input_layer.weight"].dtype == np.float32 and raw["t_embedder.mlp.0.weight"].dtype == np.float32
    _, p1 = load_model(tmp_path / "a")
    save_model(tmp_path / "b", "SLatFlowModel", args, p1)
    _, p2 = load_model(tmp_path / "b")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p1, p2))
    raw_b = load_file(str(tmp_path / "b.safetensors"))
    assert all(np.array_equal(raw[k], raw_b[k]) for k in raw)
    assert json.loads((tmp_path / "b.json").read_text())["name"] == "SLatFlowModel"


def test_strict_loading_lists_every_problem_and_names_the_file(tmp_path):
    cfg = load_config("experiments/models/slat_vae.py:tiny_dec_gs")
    module = model_from_config(cfg)
    save_model(tmp_path / "m", cfg.class_name, cfg.args.to_dict(), _random_params(module))
    t = load_file(str(tmp_path / "m.safetensors"))
    del t["blocks.1.mlp.mlp.2.bias"]
    t["blocks.0.attn.to_out.weight"] = t["blocks.0.attn.to_out.weight"][:, :-1]
    t["not.a.real.key"] = np.zeros(3, np.float32)
    save_file(t, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        load_model(tmp_path / "m")
    msg = str(e.value)
    assert str(tmp_path / "m.safetensors") in msg
    assert "blocks.1.mlp.mlp.2.bias" in msg and "not.a.real.key" in msg and "blocks.0.attn.to_out.weight" in msg


def test_truncated_or_malformed_files_fail_clearly(tmp_path):
    cfg = load_config("experiments/models/ss_vae.py:tiny_dec")
    save_model(tmp_path / "m", cfg.class_name, cfg.args.to_dict(), _random_params(model_from_config(cfg)))
    f = tmp_path / "m.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=str(f)):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text('{"name": "SparseStructureDecoder"')
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text('{"name": "NoSuchModel", "args": {}}')
    with pytest.raises(CheckpointError, match="unknown model class"):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text('{"name": "SparseStructureDecoder", "args": {"bogus_arg": 1}}')
    with pytest.raises(CheckpointError, match="bogus_arg"):
        load_model(tmp_path / "m")
