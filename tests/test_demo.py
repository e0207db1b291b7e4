"""The demo trains every stage through the one trainer: its stage configs are valid trainer configs,
the library never imports the offline data pipeline, and (slow) the smoke run writes every output."""
import ast
import json
from pathlib import Path

import imageio.v2 as imageio
import pytest

from trellis_jax.config_loader import load_config

REPO = Path(__file__).resolve().parents[1]


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
    assert set(cfg.stages) == {"ss_vae", "slat_vae", "ss_flow", "slat_flow"}
    for stage in cfg.stages:
        tc = stage_config(cfg, stage, tmp_path, batch_size=cfg.batch_size[stage], steps=cfg.steps[stage])
        check_run_config(tc)
        assert tc.task == stage and tc.data.kind == "grain" and tc.data.path == str(tmp_path)
        assert tc.total_steps == cfg.steps[stage] and tc.optimizer.lr == cfg.lr and tc.seed == cfg.seed
        if stage.endswith("vae"):
            build_task(tc)  # (flow tasks would load their condition encoder: covered by the smoke run)


@pytest.mark.slow
def test_demo_smoke_run_writes_every_output(tmp_path):
    from trellis_jax import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--config", "experiments/demo.py:smoke", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sv = summary["slat_vae"]
    assert sv["heldout_psnr_before"] > 0 and sv["heldout_psnr_after"] > 0
    for stage in ("ss_vae", "slat_vae", "ss_flow_image", "slat_flow_image"):
        assert (out / "train" / stage / "metrics.jsonl").exists() and list((out / "train" / stage / "ckpts").glob("*.json"))
    pj = json.loads((out / "weights_image" / "pipeline.json").read_text())
    assert set(pj["args"]["models"]) == {"sparse_structure_decoder", "sparse_structure_flow_model", "slat_flow_model", "slat_decoder_gs"}
    rows = summary["outputs"]["image"]
    assert len(rows) + len(summary["skipped"]["image"]) == 2
    for row in rows:
        for f in ("gaussians.ply", "voxels.ply", "voxels.glb", "preview.png", "turntable.mp4"):
            assert (Path(row["dir"]) / f).stat().st_size > 0
        assert imageio.get_reader(Path(row["dir"]) / "turntable.mp4").count_frames() == 8  # the smoke variant's frames
