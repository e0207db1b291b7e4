"""Losses of the reference's VAE and decoder training (docs/reference_facts.md#losses)."""
