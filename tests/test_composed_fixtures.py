"""Sampler cases of the reference-fixture format, made here from tiny models and a step-by-step
Euler loop written from the reference's algorithm (float64 linspace times, interval test on the
warped time, separate conditional / negative calls, multi-image per step), then checked by
`check_fixture` through the jitted scan sampler."""
import json
import shutil

import jax
import numpy as np
import pytest

from trellis_jax.checkpoints import save_model
from trellis_jax.sparse.tensor import SparseTensor
from trellis_jax.tools import check_fixture
from trellis_jax.tools.composed_fixtures import case_kind
from trellis_jax.config_loader import load_config
from trellis_jax.models.registry import model_from_config
from trellis_jax.tools.fixture_runner import sort_packed
from trellis_jax.tools.synthetic import random_params, reference_inputs

PARAMS = {"steps": 5, "cfg_strength": 2.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}


def loop_sampler(forward, noise, cond, neg_cond, params, multi_image):
    """The reference's FlowEulerGuidanceIntervalSampler, one network call per line, in float64 time."""
    t_seq = np.linspace(1, 0, params["steps"] + 1)
    r = params["rescale_t"]
    t_seq = r * t_seq / (1 + (r - 1) * t_seq)
    w, (lo, hi) = params["cfg_strength"], params["cfg_interval"]
    x = noise
    for i in range(params["steps"]):
        t, t_prev = float(t_seq[i]), float(t_seq[i + 1])
        if multi_image == "stochastic":
            v_c = forward(x, t, cond[i % len(cond)][None])
        elif multi_image == "multidiffusion":
            v_c = sum(forward(x, t, cond[k][None]) for k in range(len(cond))) / len(cond)
        else:
            v_c = forward(x, t, cond)
        v = (1 + w) * v_c - w * forward(x, t, neg_cond) if lo <= t <= hi else v_c
        x = x - np.float32(t - t_prev) * v
    return x


def _write_case(root, spec, multi_image, rng):
    cfg = load_config(f"experiments/models/{spec}")
    module = model_from_config(cfg)
    params = random_params(module, std=0.1)
    d = root / f"sampler_{cfg.class_name}_{multi_image}"
    save_model(d / "model", cfg.class_name, cfg.args.to_dict(), params)
    io = reference_inputs(module, rng)
    K = 3 if multi_image else 2
    cond = rng.normal(size=(K,) + io["cond"].shape[1:]).astype(np.float32)
    neg = np.zeros((1,) + cond.shape[1:], np.float32)
    apply = jax.jit(module.apply)
    if "x" in io:  # dense G_S: noise channels-first; batch 1 for multi-image
        noise = io["x"][:1] if multi_image else io["x"]
        fwd = lambda x, t, c: np.moveaxis(np.asarray(apply(params, np.moveaxis(x, 1, -1), np.full(len(x), t, np.float32),
                                                            np.broadcast_to(c, (len(x),) + c.shape[1:]))), -1, 1)
        out = {"out": loop_sampler(fwd, noise, cond, neg, PARAMS, multi_image)}
        data = {"noise": noise}
    else:
        st = SparseTensor.from_packed(io["coords"], io["feats"], capacity=int(np.bincount(io["coords"][:, 0]).max()),
                                      resolution=module.resolution)
        fwd = lambda x, t, c: np.asarray(apply(params, st.replace_feats(x), np.full(len(x), t, np.float32),
                                                np.broadcast_to(c, (len(x),) + c.shape[1:])).feats)
        feats = loop_sampler(fwd, np.asarray(st.feats), cond, neg, PARAMS, multi_image)
        out = {"out_feats": sort_packed(*st.replace_feats(feats).to_packed())[1]}
        coords, noise = sort_packed(io["coords"], io["feats"])  # the case stores rows sorted, like its output
        data = {"noise": noise, "coords": coords}
    np.savez(d / "io.npz", cond=cond, neg_cond=neg, **data, **out)
    (d / "sampler.json").write_text(json.dumps({"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                                "params": PARAMS, "multi_image": multi_image}))
    return d


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler_cases")
    rng = np.random.default_rng(3)
    return [_write_case(root, "ss_flow.py:tiny", None, rng), _write_case(root, "ss_flow.py:tiny", "stochastic", rng),
            _write_case(root, "ss_flow.py:tiny", "multidiffusion", rng), _write_case(root, "slat_flow.py:tiny", None, rng)]


def test_sampler_cases_match_the_step_by_step_reference_loop(cases, capsys):
    assert all(case_kind(d) == "sampler" for d in cases)
    assert check_fixture.main([str(d) for d in cases]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"check_fixture: {len(cases)} passed, 0 failed"


def test_a_wrong_sampler_setting_fails_the_case(cases, tmp_path, capsys):
    d = tmp_path / cases[1].name
    shutil.copytree(cases[1], d)
    spec = json.loads((d / "sampler.json").read_text())
    spec["multi_image"] = "multidiffusion"  # the stored sample was made with 'stochastic'
    (d / "sampler.json").write_text(json.dumps(spec))
    assert check_fixture.main([str(d)]) == 1
    spec["name"] = "DDIMSampler"
    (d / "sampler.json").write_text(json.dumps(spec))
    assert check_fixture.main([str(d)]) == 1
    assert "unknown sampler 'DDIMSampler'" in capsys.readouterr().out
