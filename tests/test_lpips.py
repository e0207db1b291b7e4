"""LPIPS (VGG16, lpips v0.1): parity with the `lpips` PyTorch package through a committed fixture, and
with an independent numpy forward.

torch is not in the project venv: `tests/fixtures/lpips` was made by `tools/make_lpips_fixture.py` with
the package itself (its shipped linear layers, saved by torch.save; a seeded random VGG16 backbone, since
the pretrained one cannot be downloaded here). The numpy re-derivation (NCHW, torch key layout, explicit
im2col convolution) also covers the legacy and zip .pth layouts. Backbones here are random, not VGG16's.
"""
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from trellis_jax.losses import lpips as L
from trellis_jax.losses.image import reconstruction_loss
from tests.lpips_random_weights import fingerprint, random_lin_state_dict, random_vgg16_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "lpips"


def _random_state_dicts(seed=0):
    return random_vgg16_state_dict(seed), random_lin_state_dict(np.random.default_rng(seed + 1))


def _conv3x3_nchw(x, w, b):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, dy : dy + h, dx : dx + wd] for dy in range(3) for dx in range(3)], axis=2)  # [N, C, 9, H, W]
    return np.einsum("nckhw,ock->nohw", cols, w.reshape(w.shape[0], c, 9), optimize=True) + b[None, :, None, None]


def _numpy_lpips(vgg, lin, a, b):
    """a, b NCHW in [-1, 1] -> [N] (float64)."""
    shift = np.array(L.SHIFT)[None, :, None, None]
    scale = np.array(L.SCALE)[None, :, None, None]
    outs = []
    for img in (a, b):
        x = (img.astype(np.float64) - shift) / scale
        feats = []
        for s, layers in enumerate(L.VGG16_STAGES):
            if s > 0:
                n, c, h, w = x.shape
                x = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
            for i in layers:
                x = np.maximum(_conv3x3_nchw(x, vgg[f"features.{i}.weight"].astype(np.float64), vgg[f"features.{i}.bias"]), 0)
            feats.append(x)
        outs.append(feats)
    total = 0
    for k, (f0, f1) in enumerate(zip(*outs)):
        n0 = f0 / (np.sqrt((f0**2).sum(1, keepdims=True)) + 1e-10)
        n1 = f1 / (np.sqrt((f1**2).sum(1, keepdims=True)) + 1e-10)
        d = ((n0 - n1) ** 2 * lin[f"lin{k}.model.1.weight"].reshape(1, -1, 1, 1)).sum(1)
        total = total + d.mean(axis=(1, 2))
    return total


def test_lpips_matches_numpy_reference_on_random_weights(tmp_path):
    """Weights as the real files are laid out: torchvision's VGG16 and lpips' vgg.pth (legacy and zip torch.save)."""
    from tests import torch_pickle_writer

    vgg, lin = _random_state_dicts()
    torch_pickle_writer.save_arrays(vgg, tmp_path / "vgg16-397923af.pth", legacy=True)
    torch_pickle_writer.save_arrays(lin, tmp_path / "vgg.pth", legacy=False)
    params = L.load_lpips(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
    from safetensors.numpy import save_file

    np.savez(tmp_path / "vgg16.npz", **vgg)
    save_file(lin, str(tmp_path / "lin.safetensors"))
    same_params = L.load_lpips(tmp_path / "vgg16.npz", tmp_path / "lin.safetensors")
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), params, same_params))
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 3, 34, 36)).astype(np.float32)  # odd pooled sizes exercise floor pooling
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    want = _numpy_lpips(vgg, lin, a, b)
    got = np.asarray(jax.jit(L.lpips_fn(params))(jnp.asarray(a.transpose(0, 2, 3, 1)), jnp.asarray(b.transpose(0, 2, 3, 1))))
    assert want.min() > 1e-3  # a non-trivial distance
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    same = L.lpips_fn(params)(jnp.asarray(a.transpose(0, 2, 3, 1)), jnp.asarray(a.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(same), 0, atol=1e-7)


def test_lpips_matches_the_pytorch_package_fixture(tmp_path):
    """Distances of the `lpips` package (torch, fp32) on two image sizes, to 1e-5; linear layers read from the
    torch-written lin.pth, the backbone regenerated from the fixture's seed."""
    io = np.load(FIXTURE / "io.npz")
    vgg = random_vgg16_state_dict(int(io["seed"]))
    np.testing.assert_allclose(fingerprint(vgg), io["fingerprint"], rtol=1e-12,
                               err_msg="numpy's random stream changed: regenerate the fixture")
    np.savez(tmp_path / "vgg16.npz", **vgg)
    fn = jax.jit(L.lpips_fn(L.load_lpips(tmp_path / "vgg16.npz", FIXTURE / "lin.pth")))
    for name in ("small", "square"):
        a, b = (jnp.asarray(io[f"{name}_{k}"].transpose(0, 2, 3, 1)) for k in "ab")
        want = io[f"{name}_lpips"]
        assert want.min() > 1e-2
        np.testing.assert_allclose(np.asarray(fn(a, b)), want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_reconstruction_loss_adds_lpips_term(tmp_path, capsys):
    assert L.load_lpips_fn(None, None) is None
    assert "no LPIPS term" in capsys.readouterr().out
    vgg, lin = _random_state_dicts()
    np.savez(tmp_path / "vgg.npz", **vgg)
    np.savez(tmp_path / "lin.npz", **lin)
    fn = L.load_lpips_fn(tmp_path / "vgg.npz", tmp_path / "lin.npz")
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
    b = jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
    loss_plain, terms_plain = reconstruction_loss(a, b)
    loss, terms = reconstruction_loss(a, b, fn)
    np.testing.assert_allclose(float(loss), float(loss_plain) + 0.2 * float(terms["lpips"]), rtol=1e-6)
    assert float(terms["lpips"]) > 0 and "lpips" not in terms_plain


@pytest.mark.parametrize("problem", ["missing", "shape", "negative", "format", "corrupt_pth"])
def test_bad_lpips_weights_name_the_file(tmp_path, problem):
    vgg, lin = _random_state_dicts()
    if problem == "missing":
        del vgg["features.10.weight"]
    elif problem == "shape":
        vgg["features.0.bias"] = np.zeros(3, np.float32)
    elif problem == "negative":
        lin["lin2.model.1.weight"] = -lin["lin2.model.1.weight"]
    np.savez(tmp_path / "vgg.npz", **vgg)
    np.savez(tmp_path / "lin.npz", **lin)
    backbone = tmp_path / {"format": "vgg.bin", "corrupt_pth": "vgg.pth"}.get(problem, "vgg.npz")
    backbone.touch()
    with pytest.raises(L.LPIPSWeightsError, match=str(tmp_path)):
        L.load_lpips(backbone, tmp_path / "lin.npz")
