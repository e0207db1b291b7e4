"""`trellis-jax aot`: a tiny train step and the tiny sampler compiled for a 4-chip TPU v5e slice on
this CPU host (the TPU compiler of the `libtpu` wheel), plus the loop-aware FLOP count."""
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from trellis_jax import aot
from trellis_jax.config_loader import apply_overrides, load_config
from trellis_jax.tools.jaxpr_flops import count_flops
from trellis_jax.training import sharding as sh

try:
    import libtpu  # noqa: F401

    HAVE_LIBTPU = True
except ImportError:
    HAVE_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason='libtpu is not installed (pip install -e ".[tpu]"): no TPU compiler')

FIGURE = re.compile(r"^aot: job=\S+ topology=\S+ chips=\d+ hbm_frac=[\d.]+ est_step_s=(?:[\d.e+-]+|nan) est_mfu=(?:[\d.e+-]+|nan)$")


def _positive_memory(report):
    m = report.memory
    assert m["argument"] > 0 and m["temp"] > 0 and m["code"] > 0 and m["total"] > 0, m
    assert 0 < report.hbm_frac < 1


@needs_libtpu
def test_train_step_compiles_for_a_tpu_slice_with_the_rules_tables_shardings():
    cfg = apply_overrides(load_config("experiments/train/ss_flow.py:tiny"),
                          ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2", "model.args.num_blocks=1"])
    devices = aot.topology_devices("v5e:2x2")
    job = aot.build_job(cfg, devices, "ss_flow:tiny", "train")
    report = aot.compile_report(job, "v5e:2x2", devices)
    _positive_memory(report)
    assert report.chips == 4 and report.flops > 0 and report.est_step_s > 0 and report.est_mfu > 0

    state_out = report.compiled.output_shardings[0]
    mesh = job.out_shardings.params["params"]["input_layer"]["kernel"].mesh
    # what the rules table says, by logical names: mlp_0 kernel [embed, mlp] -> (fsdp, tensor)
    kernel = state_out.params["params"]["blocks_0"]["mlp"]["mlp_0"]["kernel"]
    expected = sh.logical_to_spec(("embed", "mlp"), (64, 256), mesh, sh.DEFAULT_RULES)
    assert expected == P("fsdp", "tensor") and kernel.spec == expected
    for got, want in zip(jax.tree.leaves(state_out), jax.tree.leaves(job.out_shardings)):
        assert got.spec == want.spec
    assert FIGURE.match(aot.format_report(job, report)[-1])


@needs_libtpu
def test_tiny_sampler_compiles_for_a_tpu_slice():
    cfg = apply_overrides(load_config("experiments/sample/pipeline.py:tiny"),
                          ["batch_size=4", "compute_dtype=bfloat16", "weights_dtype=bfloat16", "num_stage2_sizes=1",
                           # the TPU compiler takes seconds per 3D convolution / sort on 2 CPU cores: one block
                           # per network, the SS decoder keeps only its input, upsampling and output convs
                           "models.sparse_structure_decoder.args.num_res_blocks=0",
                           "models.sparse_structure_decoder.args.num_res_blocks_middle=0",
                           "models.sparse_structure_flow_model.args.num_blocks=1", "models.slat_flow_model.args.num_blocks=1",
                           "models.slat_flow_model.args.num_io_res_blocks=1", "models.slat_decoder_gs.args.num_blocks=1"])
    devices = aot.topology_devices("v5e:2x2")
    job = aot.build_job(cfg, devices, "pipeline:tiny", None)
    report = aot.compile_report(job, "v5e:2x2", devices)
    _positive_memory(report)
    assert report.flops > 0 and report.loop_factor > 1  # the Euler steps are a scan
    assert FIGURE.match(aot.format_report(job, report)[-1])


def test_without_libtpu_one_line_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "libtpu", None)  # import libtpu -> ImportError
    assert aot.main(["--config", "experiments/train/ss_flow.py:tiny", "--topology", "v5e:2x2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[tpu]"' in err


def test_step_estimate_scales_by_the_loop_factor_and_has_none_for_a_non_positive_roofline():
    est, mfu = aot.step_estimate(2.0, 3.0, 6e12, 1e12)
    assert est == 6.0 and mfu == 1.0
    for bad in (-161.5, 0.0, float("nan")):  # XLA gave -161.5 s for the released sampler
        est, mfu = aot.step_estimate(bad, 3.0, 6e12, 1e12)
        assert est != est and mfu != mfu


def test_unknown_chip_is_one_line():
    with pytest.raises(aot.AOTError, match="unknown chip 'v9'"):
        aot.topology_devices("v9:2x2")


def test_flop_count_multiplies_scans_and_takes_the_costliest_branch():
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    matmul = 2 * 64**3

    def f(x, i):
        y = jax.lax.scan(lambda c, _: (jnp.tanh(c @ x), None), x, None, length=5)[0]
        return jax.lax.switch(i, [lambda y: y, lambda y: (y @ x) @ x], y)

    counts = count_flops(jax.jit(f).trace(x, jax.ShapeDtypeStruct((), jnp.int32)).jaxpr)
    assert counts.flops == 7 * matmul and counts.flops_once == 3 * matmul and counts.unknown_loops == 0
