"""Test-session setup: 8 simulated CPU devices (sharding tests) and parsed absl flags (grain)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

try:  # grain's multi-worker loaders read absl flags
    from absl import flags

    flags.FLAGS.mark_as_parsed()
except Exception:  # pragma: no cover - absl is a grain dependency
    pass


import pytest


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A tiny random-weight image pipeline directory, written once per test session (CLI tests share it)."""
    from trellis_jax.sampling.random_pipeline import write_random_pipeline

    return write_random_pipeline(tmp_path_factory.mktemp("pipe") / "weights", steps=2)


@pytest.fixture(scope="session")
def prompt(tmp_path_factory):
    """A 64x64 RGBA condition image (a red box on transparent)."""
    import numpy as np
    from PIL import Image

    img = np.zeros((64, 64, 4), np.uint8)
    img[16:48, 20:44] = (200, 60, 40, 255)
    p = tmp_path_factory.mktemp("prompt") / "red.png"
    Image.fromarray(img).save(p)
    return p


@pytest.fixture
def compiles():
    """Names of the functions XLA compiled while the test ran (jax.monitoring's backend-compile event),
    in order: `compiles.count("jit(name)")` says how often one was (re)compiled."""
    import jax

    names: list[str] = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kw.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield names
    jax.monitoring.unregister_event_duration_listener(listener)
