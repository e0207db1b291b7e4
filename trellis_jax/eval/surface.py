"""Area-weighted random points on a padded triangle mesh, for Chamfer distance and F-score."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_surface(key: jax.Array, vertices: jax.Array, faces: jax.Array, face_mask: jax.Array, num_points: int) -> jax.Array:
    """Uniform points on the valid faces of vertices [V, 3], faces [F, 3] (face_mask [F]) -> [num_points, 3].

    Faces are drawn with probability ∝ area (padding faces have none) and points uniformly inside each
    by the square-root barycentric rule. A mesh with no valid face gives all points at its first vertex."""
    tri = vertices[faces]  # [F, 3, 3]
    area = 0.5 * jnp.linalg.norm(jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    area = jnp.where(face_mask, area, 0.0)
    logits = jnp.where(area > 0, jnp.log(jnp.maximum(area, 1e-30)), -jnp.inf)
    logits = jnp.where(jnp.any(area > 0), logits, jnp.zeros_like(logits))
    kf, ku = jax.random.split(key)
    face = jax.random.categorical(kf, logits, shape=(num_points,))
    u = jax.random.uniform(ku, (num_points, 2))
    s = jnp.sqrt(u[:, 0])
    w = jnp.stack([1.0 - s, s * (1.0 - u[:, 1]), s * u[:, 1]], -1)
    return jnp.einsum("pk,pkc->pc", w, tri[face])
