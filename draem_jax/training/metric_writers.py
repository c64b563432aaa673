"""Scalar metrics to `workdir/metrics.jsonl` and TensorBoard event files.

One JSON object per line: `{"step": s, "time": t, "<name>": value, ...}`. When a run resumes
from checkpoint s, lines logged after s by the interrupted process are dropped (the resumed run
logs those steps again), and TensorBoard is told to purge events after s, so both logs read
as one uninterrupted run.
"""

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from draem_jax import fileio

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """All records of `workdir/metrics.jsonl` (an empty list if there is none)."""
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break  # A line cut by a kill: everything after it is unreliable.
  return records


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard (process 0 only; others do nothing).

  Args:
    workdir: the run's folder.
    resume_step: the step the run restarts from (0 for a new run).
    enabled: False on processes other than 0.
  """

  def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = Path(workdir) / METRICS_FILE
    self.path.parent.mkdir(parents=True, exist_ok=True)
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
    fileio.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self._file = open(self.path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR),
                               purge_step=resume_step if resume_step else None)
    except ImportError:  # TensorBoard files are a convenience; the JSONL log is the record.
      self._tb = None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` at `step`; non-finite values are written as null."""
    if not self.enabled:
      return
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({k: _finite_or_none(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
