"""Orbax checkpoints of a training run: TrainState (params, optimizer state, EMA, step, rng) + data state.

    ckpt = Checkpointer(workdir / "checkpoints", keep=3, async_save=True)
    ckpt.save(step, state, data_state)          # asynchronous; committed atomically by orbax
    state, data_state = ckpt.restore(ckpt.latest_step(), abstract_state)   # abstract: ShapeDtypeStruct
                                                                          # with the (new) mesh's shardings
A checkpoint that cannot be read raises `CheckpointError` naming its directory; nothing is deleted.
"""
from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (truncated, corrupt, or from another model)."""


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

    def restore(self, step: int, abstract_state):
        """(state placed as `abstract_state`'s shardings, data state dict) of checkpoint `step`."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for unreadable files
            raise CheckpointError(
                f"cannot restore the checkpoint {self.path(step)} ({type(e).__name__}: {str(e)[:500]}); it may be "
                f"truncated or corrupt, or written with a different model/optimizer config. "
                f"Nothing was deleted: move that directory away to resume from an earlier "
                f"step ({[s for s in self.all_steps() if s != step] or 'none'}) or pass a fresh --workdir") from e
        return out.state, out.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
