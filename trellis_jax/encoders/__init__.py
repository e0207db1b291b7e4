"""Frozen condition encoders in Flax: DINOv2 ViT-L/14 with registers (image) and CLIP ViT-L/14 text."""
