"""The demo trains every stage through the one trainer: its stage configs are valid trainer configs,
the library never imports the offline data pipeline, and (slow) the smoke run writes every output."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import trimesh

from trellis_jax.config_loader import load_config

REPO = Path(__file__).resolve().parents[1]


def cfg_smoke():
    return load_config("experiments/demo.py:smoke")


def test_trellis_jax_never_imports_data_pipeline():
    """The package boundary: data_pipeline (the offline build) depends on trellis_jax, never the reverse."""
    bad = []
    for path in sorted((REPO / "trellis_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "data_pipeline"]
    assert not bad, bad


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_every_demo_stage_is_a_trainer_config(variant, tmp_path):
    from trellis_jax.demo import stage_config
    from trellis_jax.training.trainer import build_task, check_run_config

    cfg = load_config(f"experiments/demo.py:{variant}")
    assert set(cfg.stages) == {"ss_vae", "slat_vae", "ss_flow", "slat_flow", "mesh_decoder"}
    for stage in cfg.stages:
        tc = stage_config(cfg, stage, tmp_path, batch_size=cfg.batch_size[stage], steps=cfg.steps[stage])
        check_run_config(tc)
        assert tc.task == stage and tc.data.kind == "grain" and tc.data.path == str(tmp_path)
        own = dict(o.split("=", 1) for o in cfg.stages[stage].overrides)  # a stage's own keys win over the common ones
        assert tc.total_steps == cfg.steps[stage] and tc.seed == cfg.seed
        assert tc.optimizer.lr == float(own.get("optimizer.lr", cfg.lr))
        if stage.endswith(("vae", "decoder")):
            build_task(tc)  # (flow tasks would load their condition encoder: covered by the smoke run)
    md = stage_config(cfg, "mesh_decoder", tmp_path, batch_size=1, steps=1)
    assert md.model.decoder.args.resolution == md.model.encoder.args.resolution == cfg.voxel_resolution


@pytest.mark.slow
def test_demo_smoke_run_writes_every_output(tmp_path):
    # its own process on this host's one CPU device, as a user runs it (the suite's 8 simulated devices
    # would shard the demo's batches of 1-2 over 8)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "trellis_jax.cli", "demo", "--config", "experiments/demo.py:smoke",
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sv = summary["slat_vae"]
    assert sv["heldout_psnr_before"] > 0 and sv["heldout_psnr_after"] > 0
    for stage in ("ss_vae", "slat_vae", "mesh_decoder", "ss_flow_image", "slat_flow_image"):
        assert (out / "train" / stage / "metrics.jsonl").exists() and list((out / "train" / stage / "ckpts").glob("*.json"))
    md_config = json.loads((out / "train" / "mesh_decoder" / "config.json").read_text())
    assert md_config["model"]["encoder_checkpoint"].endswith("train/slat_vae/ckpts/slat_enc_tiny")  # the demo's trained encoder
    pj = json.loads((out / "weights_image" / "pipeline.json").read_text())
    assert set(pj["args"]["models"]) == {"sparse_structure_decoder", "sparse_structure_flow_model", "slat_flow_model",
                                         "slat_decoder_gs", "slat_decoder_mesh"}
    rows = summary["outputs"]["image"]
    assert len(rows) + len(summary["skipped"]["image"]) == 2
    for row in rows:
        for f in ("gaussians.ply", "voxels.ply", "voxels.glb", "preview.png", "turntable.mp4", "mesh.glb"):
            assert (Path(row["dir"]) / f).stat().st_size > 0
        glb = trimesh.load(Path(row["dir"]) / "mesh.glb", force="mesh")
        assert isinstance(glb.visual, trimesh.visual.TextureVisuals) and len(glb.faces) > 0  # baked from the Gaussians
        video = imageio.get_reader(Path(row["dir"]) / "turntable.mp4")
        R = cfg_smoke().assets.video_resolution
        assert video.count_frames() == 8 and video.get_data(0).shape == (R, 3 * R, 3)  # Gaussians | mesh colour | normals
