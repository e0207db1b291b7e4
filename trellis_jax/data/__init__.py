"""Training input: the ArrayRecord record schema, crash-safe shards, and the grain loaders per stage.

The offline build (`data_pipeline/`: ingest, render, voxelise, features, encode latents) writes datasets
in this format and depends on this package; nothing here depends on `data_pipeline`.
"""
