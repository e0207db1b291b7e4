"""Hostile-but-fair inputs through the CLI (in-process): each gives exit code != 0, ONE error line naming
the file and the problem, and leaves what was already written untouched. Reuses the session's tiny
random pipeline (conftest `weights`, `prompt`); almost every case stops before any model is sampled."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trellis_jax import cli


def run_cli(capsys, *argv):
    """(exit code, stderr) of one in-process CLI call; asserts the error is one line, not a traceback."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_latents(path, n=40, channels=8, resolution=32, seed=0, ss=True, **override):
    rng = np.random.default_rng(seed)
    flat = rng.choice(resolution ** 3, n, replace=False)
    arrays = {"coords": np.stack(np.unravel_index(flat, (resolution,) * 3), -1).astype(np.uint8),
              "feats": rng.normal(size=(n, channels)).astype(np.float32)}
    if ss:
        arrays["ss_latent"] = rng.normal(size=(8, 8, 8, 8)).astype(np.float32)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def derived_pipeline(weights: Path, dest: Path, edit_pipeline=None, edit_model=None) -> Path:
    """A copy of the tiny pipeline directory with pipeline.json / one model json edited (tensors copied)."""
    shutil.copytree(weights, dest)
    if edit_pipeline:
        pj = json.loads((dest / "pipeline.json").read_text())
        edit_pipeline(pj["args"])
        (dest / "pipeline.json").write_text(json.dumps(pj))
    if edit_model:
        name, fn = edit_model
        mj = json.loads((dest / "ckpts" / f"{name}.json").read_text())
        fn(mj)
        (dest / "ckpts" / f"{name}.json").write_text(json.dumps(mj))
    return dest


# ------------------------------------------------------------------------------------------ generate
@pytest.fixture
def images(tmp_path, prompt):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "notes.png").write_text("not an image")
    data = prompt.read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    return d


@pytest.mark.parametrize("case, expect", [
    ("dir", "is a directory"),
    ("notes.png", "not a readable image"),
    ("cut.png", "not a readable image"),
    ("missing.png", "file not found"),
])
def test_generate_bad_image_is_one_line_naming_it(weights, images, tmp_path, capsys, case, expect):
    path = images if case == "dir" else images / case
    rc, err = run_cli(capsys, "generate", "--weights", weights, "--image", path, "--out", tmp_path / "out")
    line = error_line(err)
    assert rc == 2 and str(path) in line and expect in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, expect", [
    (["--capacity", "0"], "--capacity must be >= 1"),
    (["--ss-steps", "0"], "--ss-steps must be >= 1"),
    (["--slat-steps", "-3"], "--slat-steps must be >= 1"),
    (["--seed", "1", "2"], "2 seeds given for 3 sample(s)"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--bake-mode", "nearest"], "--bake-mode must be one of ('fast', 'opt')"),
    (["--simplify", "1.5"], "--simplify must be in [0, 1)"),
    (["--video-frames", "-1"], "--video-frames must be >= 0"),
    (["--texture-size", "0"], "--texture-size must be >= 1"),
])
def test_generate_bad_settings(weights, prompt, tmp_path, capsys, args, expect):
    rc, err = run_cli(capsys, "generate", "--weights", weights, "--image", prompt, prompt, prompt, *args, "--out", tmp_path / "o")
    assert rc == 2 and expect in error_line(err)


def test_generate_empty_text_prompt_is_an_error(weights, tmp_path, capsys):
    rc, err = run_cli(capsys, "generate", "--weights", weights, "--text", "  ", "--out", tmp_path / "o")
    assert rc == 2 and "empty text prompt" in error_line(err)


def test_generate_refuses_an_existing_sample_folder(weights, prompt, tmp_path, capsys):
    old = tmp_path / "out" / "sample_00_seed5"
    old.mkdir(parents=True)
    (old / "latents.npz").write_bytes(b"earlier run")
    before = snapshot(tmp_path / "out")
    rc, err = run_cli(capsys, "generate", "--weights", weights, "--image", prompt, "--seed", "5", "--out", tmp_path / "out")
    line = error_line(err)
    assert rc == 2 and str(old) in line and "already exists" in line
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("edit, expect", [
    (lambda a: a["sparse_structure_sampler"]["params"].update(steps=0), "sparse_structure_sampler steps must be >= 1"),
    (lambda a: a["models"].pop("slat_decoder_gs"), "no decoder for the requested format(s) gaussian"),
    (lambda a: a["models"].update(slat_decoder_gs="ckpts/ss_dec"), "role 'slat_decoder_gs' needs a SLatGaussianDecoder"),
    (lambda a: a["slat_sampler"]["params"].update(stepz=3), "bad sampler settings"),
])
def test_generate_bad_pipeline_json_names_it(weights, prompt, tmp_path, capsys, edit, expect):
    w = derived_pipeline(weights, tmp_path / "w", edit_pipeline=edit)
    rc, err = run_cli(capsys, "generate", "--weights", w, "--image", prompt, "--out", tmp_path / "o")
    line = error_line(err)
    assert rc == 2 and str(w / "pipeline.json") in line and expect in line
    assert not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m.update(args=None), '"args" must be an object'),
    (lambda m: m["args"].update(model_channels="sixty-four"), "cannot build SLatFlowModel"),
])
def test_generate_bad_model_json_names_it(weights, prompt, tmp_path, capsys, edit, expect):
    w = derived_pipeline(weights, tmp_path / "w", edit_model=("slat_flow", edit))
    rc, err = run_cli(capsys, "generate", "--weights", w, "--image", prompt, "--out", tmp_path / "o")
    line = error_line(err)
    assert rc == 2 and str(w / "ckpts" / "slat_flow.json") in line and expect in line


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    from trellis_jax.conditioning import preprocess_image

    grey = np.full((28, 28), 32768, np.uint16)  # mid grey in 16 bits
    Image.fromarray(grey).save(tmp_path / "g16.png")
    im = Image.open(tmp_path / "g16.png")
    assert im.mode.startswith("I;16")
    x = preprocess_image(im, 14)
    np.testing.assert_allclose(x, 0.5, atol=0.01)  # PIL's convert would give 1.0 (white)


def test_long_prompt_warns_and_empty_prompt_fails():
    from trellis_jax.sample import check_texts

    class Tok:
        def count(self, text):
            return len(text.split()) + 2

    class Cond:
        tokenizer = Tok()

    logged = []
    check_texts(["a chair", " ".join(["word"] * 90)], Cond(), logged.append)
    assert len(logged) == 1 and "92 tokens" in logged[0] and "77" in logged[0]
    with pytest.raises(ValueError, match="empty text prompt"):
        check_texts([""], Cond(), logged.append)


# ------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("case, expect", [
    ("no_feats", "no 'feats' array"),
    ("channels", "feats have 5 channels, the model's latents have 8"),
    ("not_npz", "not a readable .npz file"),
    ("nan", "NaN/Inf"),
    ("out_of_grid", "outside the model's 32^3 grid"),
    ("negative", "outside the model's 32^3 grid"),
])
def test_export_bad_latents_name_the_file(weights, tmp_path, capsys, case, expect):
    path = tmp_path / "latents.npz"
    if case == "no_feats":
        write_latents(path, feats=None)
    elif case == "channels":
        write_latents(path, channels=5)
    elif case == "not_npz":
        path.write_text("hello")
    elif case == "nan":
        write_latents(path, feats=np.full((40, 8), np.nan, np.float32))
    elif case == "out_of_grid":
        write_latents(path, coords=np.stack([np.full(40, 40), np.arange(40) % 32, np.arange(40) // 32], -1).astype(np.int32))
    elif case == "negative":
        write_latents(path, coords=np.stack([np.full(40, -1), np.arange(40) % 32, np.arange(40) // 32], -1).astype(np.int32))
    rc, err = run_cli(capsys, "export", "--weights", weights, "--latents", path, "--out", tmp_path / "exp")
    line = error_line(err)
    assert rc == 2 and str(path) in line and expect in line
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob("exp.partial*"))


def test_export_bad_weights_and_existing_out(weights, tmp_path, capsys):
    lat = write_latents(tmp_path / "latents.npz")
    rc, err = run_cli(capsys, "export", "--weights", tmp_path / "nowhere", "--latents", lat, "--out", tmp_path / "exp")
    assert rc == 2 and str(tmp_path / "nowhere" / "pipeline.json") in error_line(err)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "gaussians.ply").write_text("earlier")
    rc, err = run_cli(capsys, "export", "--weights", weights, "--latents", lat, "--out", out)
    assert rc == 2 and str(out) in error_line(err) and (out / "gaussians.ply").read_text() == "earlier"


# --------------------------------------------------------------------------------------------- edit
@pytest.mark.parametrize("box, expect", [
    ((8, 0, 0, 4, 32, 32), "need 0 <= X0 < X1 (and likewise"),  # inverted: refused before loading the model
    ((-2, 0, 0, 4, 4, 4), "need 0 <= X0 < X1 (and likewise"),
    ((0, 0, 0, 64, 64, 64), "need 0 <= X0 < X1 <= 32"),          # outside the demo-size grid
])
def test_edit_box_outside_grid_or_inverted(weights, prompt, tmp_path, capsys, box, expect):
    lat = write_latents(tmp_path / "latents.npz")
    rc, err = run_cli(capsys, "edit", "region", "--weights", weights, "--asset", lat, "--image", prompt,
                      "--box", *box, "--capacity", "64", "--out", tmp_path / "reg")
    assert rc == 2 and expect in error_line(err)
    assert not (tmp_path / "reg").exists()


def test_edit_region_past_capacity_is_reported_not_cut(weights, prompt, tmp_path, capsys):
    """A 10-voxel asset regenerated over the whole grid grows to ~4 % of 32³ (>> capacity 16)."""
    lat = write_latents(tmp_path / "latents.npz", n=10)
    rc, err = run_cli(capsys, "edit", "region", "--weights", weights, "--asset", lat, "--image", prompt,
                      "--box", 0, 0, 0, 32, 32, 32, "--capacity", "16", "--resamples", "1", "--out", tmp_path / "reg")
    line = error_line(err)
    assert rc == 2 and "more than --capacity 16" in line
    assert not (tmp_path / "reg").exists() and not list(tmp_path.glob("reg.partial*"))
