"""Scoring image files in batches: the loop that predict.py and the ONNX runner share.

It needs no JAX (the runner imports it): the model is a `draem_jax.Detector` of either backend.
Files are read and prepared (`Detector.prepare`), scored `Detector.batch_size` at a time
(`Detector.infer`, which pads a fixed batch) and turned into `Prediction`s; a file that cannot
be read is skipped and recorded in `errors.csv` (file, error) while the rest are scored.
Scores are written as they come: `scores.csv` grows by one flushed block of rows per batch
(an interrupted run keeps what it scored), and `scores.json` is written when all are done.
"""

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from draem_jax import fileio
from draem_jax.errors import ConfigError, DataError
from draem_jax.evaluation import visualize

ERRORS_FILE = "errors.csv"
ERROR_COLUMNS = ("file", "error")



class Scored(list):
  """The records of the images scored, in input order; `errors` lists the unreadable files."""

  def __init__(self, records=(), errors=()):
    super().__init__(records)
    self.errors: list[dict[str, str]] = list(errors)


def check_out_dir(out_dir: str | os.PathLike) -> Path:
  """`out_dir` as a Path; a clear error if it names an existing file (before any compute)."""
  out_dir = Path(out_dir).expanduser()
  if out_dir.exists() and not out_dir.is_dir():
    raise ConfigError(f"--out {out_dir} is an existing file, not a folder: name a folder "
                      "for the overlays, scores.csv and scores.json.")
  return out_dir


def output_names(paths: Sequence[Path]) -> list[str]:
  """Unique PNG names: the file stem, with a counter where two inputs share a stem."""
  names, seen = [], {}
  for p in paths:
    count = seen.get(p.stem, 0)
    seen[p.stem] = count + 1
    names.append(f"{p.stem}.png" if count == 0 else f"{p.stem}_{count}.png")
  return names


class ScoreLog:
  """scores.csv appended per batch (flushed), errors.csv per unreadable file, scores.json at
  the end (`close`). Opening it replaces the three files of an earlier run in `out_dir`."""

  def __init__(self, out_dir: Path):
    self.out_dir = Path(out_dir)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.records: list[dict[str, Any]] = []
    self.errors: list[dict[str, str]] = []
    (self.out_dir / ERRORS_FILE).unlink(missing_ok=True)
    self._scores = open(self.out_dir / fileio.SCORES_CSV, "w", newline="")
    self._writer = csv.DictWriter(self._scores, fieldnames=list(fileio.SCORE_COLUMNS))
    self._writer.writeheader()
    self._errors = None

  def add(self, records: list[dict[str, Any]]) -> None:
    self.records += records
    self._writer.writerows(fileio.csv_rows(records))
    self._scores.flush()

  def error(self, path: Path, message: str) -> None:
    if self._errors is None:
      self._errors = open(self.out_dir / ERRORS_FILE, "w", newline="")
      self._error_writer = csv.DictWriter(self._errors, fieldnames=list(ERROR_COLUMNS))
      self._error_writer.writeheader()
    row = {"file": str(path), "error": message}
    self.errors.append(row)
    self._error_writer.writerow(row)
    self._errors.flush()

  def close(self) -> None:
    self._scores.close()
    if self._errors is not None:
      self._errors.close()
    fileio.atomic_write_json(self.out_dir / fileio.SCORES_JSON, self.records)


def score_files(detector, paths: Sequence[Path], out_dir: str | os.PathLike, *,
                write_overlays: bool = True, progress: Callable | None = None) -> Scored:
  """Scores image files of any size; writes overlays, scores.csv, scores.json (and errors.csv).

  Args:
    detector: a `draem_jax.Detector` (its prepare, infer and result steps, and batch_size).
    paths: the image files.
    out_dir: the output folder (created).
    write_overlays: one PNG per image (image | heatmap overlay | predicted mask at the image's
      own resolution).
    progress: wraps the iterable of batch starts (e.g. tqdm), or None.

  Returns:
    One record per readable image in input order (file, score, normalized_score, threshold,
    anomalous); `.errors`: one {'file', 'error'} per unreadable file.
  """
  out_dir = Path(out_dir)
  names = output_names(paths)
  log = ScoreLog(out_dir)
  try:
    starts = range(0, len(paths), detector.batch_size)
    for start in (progress(starts) if progress else starts):
      ready = []  # (index, path, image at its own size, model input)
      for i, path in enumerate(paths[start:start + detector.batch_size], start):
        try:
          ready.append((i, path, *detector.prepare(path)))
        except (DataError, OSError) as e:
          log.error(path, str(e))
      if not ready:
        continue
      maps, scores = detector.infer(np.stack([r[3] for r in ready]))
      results = [detector.result(image, m, s, os.fspath(path))
                 for (_, path, image, _), m, s in zip(ready, maps, scores)]
      if write_overlays:
        for (i, _, _, _), result in zip(ready, results):
          visualize.save_png(out_dir / names[i], result.panel())
      log.add([r.record() for r in results])
  finally:
    log.close()
  return Scored(log.records, log.errors)


def summary(records: list[dict[str, Any]], errors: list[dict[str, str]], out_dir) -> str:
  """The line predict.py and the runner print at the end."""
  line = (f"{len(records)} images scored, {sum(r['anomalous'] for r in records)} anomalous "
          f"-> {out_dir}")
  if errors:
    line += (f"; {len(errors)} could not be read (listed in "
             f"{Path(out_dir) / ERRORS_FILE}): {errors[0]['file']}"
             + (" and others" if len(errors) > 1 else ""))
  return line
