"""Checkpoints of a run: the train state and the data iterator, with Orbax.

The one module that knows Orbax. A checkpoint is `workdir/checkpoints/<step>/` with two items,
`state` (the `TrainState` pytree) and `data` (the grain iterator's position), so that a
restarted run continues with the exact next batch. Orbax writes each checkpoint into a
temporary folder and renames it only when complete: a process killed mid-write leaves the
previous checkpoints intact and the half-written one invisible (and removed on the next
start).

With several processes every process calls `save` and `restore` (Orbax synchronises them):
the replicated state is written once, and each process writes and reads back its own
data-iterator file. Resuming needs the same number of processes.
"""

import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from draem_jax.errors import ConfigError


def committed_steps(directory: str | os.PathLike) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending, without opening Orbax.

  Orbax writes a checkpoint under a temporary name and renames it to `<step>` only when it is
  complete, so the folders named by an integer are exactly the committed checkpoints.
  """
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
  """Saves and restores (train state, data iterator) under `directory`.

  Args:
    directory: e.g. `workdir/checkpoints`; created if missing.
    max_to_keep: number of most recent checkpoints kept.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        # Synchronous: the state is donated to the next step, and a save must be complete
        # before a SIGTERM handler lets the process exit.
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None):
    """Writes checkpoint `step` (overwriting nothing: an existing step is left as it is)."""
    if step in self._manager.all_steps():
      return
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()
    logging.info("Saved checkpoint %d to %s", step, self.directory)

  def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator | None = None,
              step: int | None = None) -> Any:
    """Restores the state (and, if given, moves `data_iterator` to the saved position).

    Args:
      abstract_state: the state's structure with `jax.ShapeDtypeStruct` leaves carrying the
        target shardings (`train_step.abstract_train_state`).
      data_iterator: iterator whose position is restored in place.
      step: which checkpoint (default: the latest).

    Returns:
      The restored state.
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      available = self.all_steps()
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; available steps: "
          f"{available or 'none (train first)'}.")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      self._check_process_count(step)
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint %d from %s", step, self.directory)
    return restored["state"]

  def _check_process_count(self, step: int) -> None:
    """Refuses to restore a data position saved by another number of processes.

    grain writes one file per process, `data/process_<i>-of-<n>.json`, and restores only the
    file of the same (i, n). The positions are in global batches and equal on every process, so
    another count would mean the same global stream re-split; resuming it is still refused
    rather than guessed, because the global batch size must then also split over the new count.
    """
    n = jax.process_count()
    saved = sorted({p.name.split("-of-")[1].removesuffix(".json") for p in
                    (self.directory / str(step) / "data").glob("process_*-of-*.json")})
    if saved and saved != [str(n)]:
      raise ConfigError(
          f"checkpoint {step} in {self.directory} was written by {', '.join(saved)} processes; "
          f"this run has {n}. Resume with the same number of processes (or train into a new "
          "--workdir).")

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

