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

from trellis_jax.checkpoints import CheckpointError, CheckpointMismatchError, load_model, load_pipeline, save_model
from trellis_jax.checkpoints.official import param_template
from trellis_jax.tools import check_fixture, param_count
from trellis_jax.config_loader import load_config
from trellis_jax.models.registry import model_from_config
from trellis_jax.tools.fixture_runner import run_fixture
from trellis_jax.tools.synthetic import random_params, reference_inputs
from spec_tables import SPEC_TABLES, count

REPO = Path(__file__).resolve().parents[1]

EXPECTED_TENSORS = {"ss_flow_img_dit_L_16l8_fp16": 489, "slat_flow_img_dit_L_64l8p2_fp16": 526,
                    "slat_flow_txt_dit_XL_64l8p2_fp16": 624, "slat_enc_swin8_B_64l8_fp16": 100,
                    "slat_dec_gs_swin8_B_64l8gs32_fp16": 101, "slat_dec_mesh_swin8_B_64l8m256c_fp16": 120,
                    "ss_dec_conv3d_16l8_fp16": 74}  # Appendix A


def test_param_count_command_prints_exact_released_counts(capsys):
    assert param_count.main(["--all"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    counts = {l.split()[0]: int(l.split()[2].replace(",", "")) for l in lines}
    tensors = {l.split()[0]: int(l.split()[4]) for l in lines}
    assert counts == {name: count(build()) for name, build in SPEC_TABLES.items()}  # rebuilt from the spec
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


@pytest.fixture(scope="module")
def made_fixtures(tmp_path_factory):
    """One fixture directory per tiny network class, made with save_model + our own forward."""
    root = tmp_path_factory.mktemp("fixtures")
    rng = np.random.default_rng(0)
    dirs = []
    for spec in TINY:
        cfg = load_config(f"experiments/models/{spec}")
        module = model_from_config(cfg)
        params = random_params(module)
        d = root / cfg.checkpoint
        args = cfg.args.to_dict()
        save_model(d / "model", cfg.class_name, args, params)
        io = reference_inputs(module, rng)
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


def test_fp16_round_trip_is_exact_and_uses_released_dtypes(tmp_path):
    cfg = load_config("experiments/models/slat_flow.py:tiny")
    args = dict(cfg.args.to_dict(), use_fp16=True)
    module = model_from_config(cfg)
    params = random_params(module)
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
    module_bf16, p_bf16 = load_model(tmp_path / "b.safetensors", param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert module_bf16.dtype == jnp.bfloat16 and {a.dtype for a in jax.tree.leaves(p_bf16)} == {jnp.dtype(jnp.bfloat16)}


def test_strict_loading_lists_every_problem_and_names_the_file(tmp_path):
    cfg = load_config("experiments/models/slat_vae.py:tiny_dec_gs")
    module = model_from_config(cfg)
    save_model(tmp_path / "m", cfg.class_name, cfg.args.to_dict(), random_params(module))
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
    save_model(tmp_path / "m", cfg.class_name, cfg.args.to_dict(), random_params(model_from_config(cfg)))
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


def test_garbage_header_and_missing_file_name_the_file(tmp_path):
    cfg = load_config("experiments/models/ss_vae.py:tiny_dec")
    save_model(tmp_path, cfg.class_name, cfg.args.to_dict(), random_params(model_from_config(cfg)), name="m")
    f = tmp_path / "m.safetensors"
    body = f.read_bytes()
    f.write_bytes((40).to_bytes(8, "little") + b"{not json at all, just garbage bytes!!}" + body[48:])
    with pytest.raises(CheckpointError, match=str(f)):
        load_model(tmp_path, "m")
    f.unlink()
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path, "m")
    with pytest.raises(CheckpointError, match="no checkpoint 'nope'"):
        load_model(tmp_path, "nope")


def test_failed_save_leaves_the_existing_checkpoint_intact(tmp_path):
    cfg = load_config("experiments/models/ss_vae.py:tiny_dec")
    module = model_from_config(cfg)
    params = random_params(module)
    save_model(tmp_path / "ckpts" / "m", cfg.class_name, cfg.args.to_dict(), params)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpts").iterdir()}
    broken = jax.tree.map(lambda a: a, params)
    broken["params"]["input_layer"]["kernel"] = np.zeros((2, 2, 2, 2))  # rank 4: cannot be exported
    with pytest.raises(ValueError):
        save_model(tmp_path / "ckpts" / "m", cfg.class_name, cfg.args.to_dict(), broken)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpts").iterdir()} == before  # no temp files left either
    _, loaded = load_model(tmp_path, "m")  # repo dir holding ckpts/
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), loaded, params))


def test_load_pipeline_resolves_local_and_cross_repo_models(tmp_path):
    image_repo, text_repo = tmp_path / "hub" / "TRELLIS-image-large", tmp_path / "TRELLIS-text-base"
    specs = {"sparse_structure_decoder": ("ss_vae.py:tiny_dec", image_repo),
             "slat_flow_model": ("slat_flow.py:tiny", text_repo)}
    refs, expected = {}, {}
    for role, (spec, repo) in specs.items():
        cfg = load_config(f"experiments/models/{spec}")
        params = random_params(model_from_config(cfg))
        save_model(repo / "ckpts" / cfg.checkpoint, cfg.class_name, cfg.args.to_dict(), params)
        refs[role] = (f"ckpts/{cfg.checkpoint}" if repo == text_repo else f"JeffreyXiang/TRELLIS-image-large/ckpts/{cfg.checkpoint}")
        expected[role] = params
    norm = {"mean": [0.1] * 8, "std": [2.0] * 8}
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    (text_repo / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline", "args": {
        "models": refs, "sparse_structure_sampler": sampler, "slat_sampler": sampler, "slat_normalization": norm,
        "text_cond_model": "openai/clip-vit-large-patch14"}}))
    with pytest.raises(CheckpointError, match="JeffreyXiang/TRELLIS-image-large/ckpts/ss_dec_tiny"):
        load_pipeline(text_repo)  # the image repo is not a sibling and no search root is given
    pipe = load_pipeline(text_repo, search_roots=[tmp_path / "hub"], dtype=jnp.bfloat16)
    assert pipe["name"] == "TrellisTextTo3DPipeline" and pipe["slat_normalization"] == norm
    assert pipe["slat_sampler"]["params"]["cfg_strength"] == 7.5 and pipe["cond_model"] == "openai/clip-vit-large-patch14"
    for role, (module, params) in pipe["models"].items():
        assert module.dtype == jnp.bfloat16
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, expected[role]))


def test_bf16_forward_is_engaged_and_close(capsys):
    from trellis_jax.tools import precision_report

    assert precision_report.main(["experiments/models/slat_vae.py:tiny_enc"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("slat_vae.py:tiny_enc") and " out_feats " in line
    rel = float(line.split("rel_err=")[1])
    assert 1e-5 < rel < 5e-2  # bf16 really computes (non-zero error), and stays within bf16 accuracy
