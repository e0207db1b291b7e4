"""Meshes -> multiview renders, 64^3 surface voxels, DINOv2 voxel features -> ArrayRecord -> grain.

Stages (each also a CLI, `python -m data_pipeline.<stage> --help`):
  ingest     load glb/gltf/obj/ply/stl with trimesh, flatten the scene, normalise into [-0.5, 0.5]^3, z-up
  render     pyrender offscreen RGBA views with the reference's camera distributions (cameras.py)
  voxelize   Open3D-rule surface voxels (exact triangle/box SAT test)
  features   DINOv2 patch tokens sampled at voxel centres, averaged over views (jitted JAX)
  shards     versioned records (schema.py) in crash-safe ArrayRecord shards
  encode     SS / SLat VAE latents added into new shards
  build      the driver over a manifest (restartable, failures manifest, throughput)
  beam_pipeline  the same on Apache Beam
  builtin    procedural + pybullet built-in dataset (no download of a dataset)
  loaders    grain input pipelines for every training stage
"""
