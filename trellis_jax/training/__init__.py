"""Training: rectified-flow objective, optimizer (AdamW + EMA + adaptive clipping), tasks, trainer."""
