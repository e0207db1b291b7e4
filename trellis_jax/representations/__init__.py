"""3D representations decoded from SLAT (batched, padded, static shapes)."""
