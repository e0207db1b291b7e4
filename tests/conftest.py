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
