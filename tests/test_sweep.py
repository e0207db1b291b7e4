"""Sweep launcher plumbing and the TensorBoard scalar reader."""
import textwrap

import pytest
from tensorboardX import SummaryWriter

from trellis_jax import sweep as sweep_lib
from trellis_jax.tools.tb_reader import read_scalars


def _write_curve(logdir, values, tag="train/loss"):
    w = SummaryWriter(str(logdir))
    for step, v in enumerate(values):
        w.add_scalar(tag, v, step)
    w.close()


def test_tb_reader_reads_scalars_back(tmp_path):
    _write_curve(tmp_path / "a", [3.0, 2.0, 1.5])
    s = read_scalars(tmp_path / "a")
    assert s["train/loss"] == [(0, 3.0), (1, 2.0), (2, 1.5)]


def test_tb_reader_ignores_truncated_tail(tmp_path):
    _write_curve(tmp_path / "a", [3.0, 2.0])
    f = next((tmp_path / "a").glob("events.out.tfevents.*"))
    f.write_bytes(f.read_bytes()[:-7])
    assert read_scalars(tmp_path / "a")["train/loss"] == [(0, 3.0)]


SWEEP = textwrap.dedent("""
    import ml_collections
    def get_sweep():
        s = ml_collections.ConfigDict()
        s.base = "experiments/train/ss_flow.py:tiny"
        s.steps = 7
        s.runs = {"width32": ["model.args.model_channels=32"], "cfg_drop0": ["p_uncond=0.0"]}
        return s
""")


def test_sweep_commands_and_summary(tmp_path, capsys):
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP)
    s = sweep_lib.load_sweep(path)
    cmd = sweep_lib.run_command(s, "width32", tmp_path / "wd")
    assert cmd[-2:] == ["--config.model.args.model_channels=32", "--config.total_steps=7"]
    assert cmd[cmd.index("--workdir") + 1] == str(tmp_path / "wd" / "width32")
    _write_curve(tmp_path / "wd" / "width32", [1.0, 0.5, 0.25])
    _write_curve(tmp_path / "wd" / "cfg_drop0", [2.0, 0.1, 0.2])
    assert sweep_lib.main([str(path), "--workdir", str(tmp_path / "wd"), "--summary-only"]) == 0
    out = capsys.readouterr().out
    assert "width32" in out and "0.25000" in out and "0.10000" in out
    assert (tmp_path / "wd" / "summary.csv").read_text().count("\n") == 3
    with pytest.raises(SystemExit):
        sweep_lib.main([str(path), "--workdir", str(tmp_path / "wd"), "--only", "nope"])


def test_sweep_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.py"):
        sweep_lib.load_sweep(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("import ml_collections\ndef get_sweep():\n    return ml_collections.ConfigDict({'runs': {}})\n")
    with pytest.raises(KeyError, match="base"):
        sweep_lib.load_sweep(bad)
