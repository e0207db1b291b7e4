"""Pure-JAX differentiable renderers (previews now; decoder training later)."""
