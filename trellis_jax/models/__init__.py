"""TRELLIS networks as Flax linen modules (one file per network)."""
