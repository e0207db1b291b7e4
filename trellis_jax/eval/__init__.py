"""Evaluation: the paper's reconstruction and generation metrics and the `trellis-jax eval` command."""
