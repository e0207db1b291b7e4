"""trellis-jax: TRELLIS structured 3D latents in JAX/Flax."""
from trellis_jax import host_memory as _host_memory

__version__ = "0.1.0"

if _host_memory.configure():  # before XLA allocates: freed CPU buffers go back to the OS
    _host_memory.release_after_compile()
