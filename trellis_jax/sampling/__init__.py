"""Rectified-flow sampling: Euler with CFG and guidance interval, the composed two-stage pipeline, editing."""
