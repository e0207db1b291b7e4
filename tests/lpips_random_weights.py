"""Seeded random LPIPS weights (numpy only), shared by the LPIPS tests and `tools/make_lpips_fixture.py`.

The backbone of the committed PyTorch-parity fixture is regenerated from its seed instead of being stored
(VGG16's conv stack is 14.7M floats); `fingerprint` lets a test tell a changed numpy stream from a bug.
"""
import numpy as np

VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_CHANNELS = (64, 128, 256, 512, 512)


def random_vgg16_state_dict(seed: int) -> dict[str, np.ndarray]:
    """He-initialised torchvision `vgg16().features` conv weights/biases (keys `features.{i}.weight|bias`)."""
    rng = np.random.default_rng(seed)
    sd, in_ch = {}, 3
    for layers, ch in zip(VGG16_STAGES, VGG16_CHANNELS):
        for i in layers:
            sd[f"features.{i}.weight"] = (rng.standard_normal((ch, in_ch, 3, 3)) * np.sqrt(2 / (9 * in_ch))).astype(np.float32)
            sd[f"features.{i}.bias"] = (0.01 * rng.standard_normal(ch)).astype(np.float32)
            in_ch = ch
    return sd


def random_lin_state_dict(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Non-negative LPIPS linear layers in the lpips package's key layout (`lin{k}.model.1.weight` [1, C, 1, 1])."""
    return {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, ch, 1, 1)).astype(np.float32) for k, ch in enumerate(VGG16_CHANNELS)}


def fingerprint(sd: dict[str, np.ndarray]) -> np.ndarray:
    """[n_tensors, 2] float64: (sum, sum of squares) of each tensor, in key order."""
    return np.array([[np.sum(v, dtype=np.float64), np.sum(np.square(v, dtype=np.float64))] for _, v in sorted(sd.items())])
