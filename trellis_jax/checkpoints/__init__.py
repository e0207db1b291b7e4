"""Official TRELLIS checkpoints (`NAME.json` + `NAME.safetensors`, `pipeline.json`) <-> Flax params."""
from trellis_jax.checkpoints.official import (
    CheckpointError,
    CheckpointMismatchError,
    load_model,
    load_pipeline,
    save_model,
    save_pipeline,
)

__all__ = ["CheckpointError", "CheckpointMismatchError", "load_model", "load_pipeline", "save_model", "save_pipeline"]
