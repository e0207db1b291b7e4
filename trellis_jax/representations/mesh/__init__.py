"""Triangle meshes from the mesh decoder's sparse FlexiCubes features (the reference's `SparseFeatures2Mesh`)."""
from trellis_jax.representations.mesh.extract import Mesh, default_capacities, extract_mesh, extract_mesh_arrays

__all__ = ["Mesh", "default_capacities", "extract_mesh", "extract_mesh_arrays"]
