"""Network building blocks shared by every TRELLIS model (dense and sparse)."""
