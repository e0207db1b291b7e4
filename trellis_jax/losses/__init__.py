"""Losses of the reference's VAE and decoder training (§7.3)."""
