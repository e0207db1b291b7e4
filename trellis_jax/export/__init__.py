"""Exporters: 3DGS PLY for Gaussians, PLY/GLB for voxel structures, PNG previews."""
