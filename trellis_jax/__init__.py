"""trellis-jax: TRELLIS structured 3D latents in JAX/Flax."""
__version__ = "0.1.0"
