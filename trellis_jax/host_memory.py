"""Host-memory settings for XLA on the CPU: freed buffers go back to the OS (applied on import).

XLA CPU allocates every call's temporaries and outputs with malloc. glibc serves blocks under its
mmap threshold from its heap, and raises that threshold each time a larger mmapped block is freed
(up to 32 MiB), so after the first call most of a forward pass's buffers live in the heap, where
freed memory is kept for reuse instead of returned: the process's peak RSS then exceeds what the
program needs at any moment by up to a gigabyte (measured on the Gaussian decoder, benchmarks/forward.py).
Holding the threshold at glibc's initial 128 KiB sends every large buffer straight to mmap and back to the OS on free; and the
compiler's own scratch, freed into the heap after each compilation, is released by malloc_trim.

Only on glibc (a no-op elsewhere); `TRELLIS_JAX_HOST_MALLOC=0` leaves malloc as it is, and so does an
explicit `MALLOC_MMAP_THRESHOLD_` in the environment.
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, held fixed (no dynamic raise)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

_libc = None


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def configure() -> bool:
    """Set the fixed mmap threshold once; True when glibc took it."""
    global _libc
    if _libc is not None:
        return True
    if os.environ.get("TRELLIS_JAX_HOST_MALLOC", "1") == "0" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    _libc = libc
    return True


def release_after_compile() -> None:
    """After each XLA compilation, hand the compiler's freed scratch back to the OS (jax.monitoring hook)."""
    if _libc is None:
        return
    import jax

    def on_event(event: str, duration: float, **_):
        if event.endswith("backend_compile_duration"):
            _libc.malloc_trim(0)

    jax.monitoring.register_event_duration_secs_listener(on_event)
