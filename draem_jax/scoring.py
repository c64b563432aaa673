"""Scoring image files in batches: the loop that predict.py and the ONNX runner share.

It needs no JAX (the runner imports it): the model is a function on a batch of images. Files
are read, resized to the model's input size and scored `batch_size` at a time; a file that
cannot be read is skipped and recorded in `errors.csv` (file, error) while the rest are scored.
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
from draem_jax import image_io
from draem_jax.errors import ConfigError, DataError
from draem_jax.evaluation import visualize

ERRORS_FILE = "errors.csv"
ERROR_COLUMNS = ("file", "error")

# A batch of uint8 (B, H, W, 3) RGB images -> (maps (B, H, W), scores (B,)).
BatchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


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


def _read(path: Path, log: ScoreLog) -> np.ndarray | None:
  """The image at `path` as uint8 RGB, or None (recorded in errors.csv) if it cannot be read."""
  try:
    return image_io.load_image(path)
  except (DataError, OSError, ValueError) as e:
    log.error(path, str(e))
    return None


def score_files(paths: Sequence[Path], predict: BatchFn, out_dir: str | os.PathLike, *,
                size: int | tuple[int, int], batch_size: int, pad: bool, threshold: float,
                pixel_threshold: float, normalize: Callable[[float], float | None],
                write_overlays: bool = True, progress: Callable | None = None
                ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
  """Scores image files of any size; writes overlays, scores.csv, scores.json (and errors.csv).

  Args:
    paths: the image files.
    predict: the model on a uint8 (B, H, W, 3) batch (`BatchFn`).
    out_dir: the output folder (created).
    size: the model's input side, or (H, W).
    batch_size: images per call of `predict`.
    pad: fill every batch up to `batch_size` (zero images, outputs dropped): models with a
      fixed batch dimension.
    threshold: the image decision threshold (anomalous when score >= threshold).
    pixel_threshold: the overlays' mask threshold.
    normalize: raw score -> normalised score (None without validation statistics).
    write_overlays: one PNG per image (image | heatmap overlay | predicted mask at the image's
      own resolution).
    progress: wraps the iterable of batch starts (e.g. tqdm), or None.

  Returns:
    (records, errors): one record per readable image in input order (file, score,
    normalized_score, threshold, anomalous); one {'file', 'error'} per unreadable file.
  """
  out_dir = Path(out_dir)
  names = output_names(paths)
  log = ScoreLog(out_dir)
  try:
    starts = range(0, len(paths), batch_size)
    for start in (progress(starts) if progress else starts):
      chunk = [(i, p, _read(p, log)) for i, p in enumerate(paths[start:start + batch_size],
                                                            start)]
      chunk = [c for c in chunk if c[2] is not None]
      if not chunk:
        continue
      batch = np.zeros((batch_size if pad else len(chunk), *image_io.size_hw(size), 3),
                       np.uint8)
      for row, (_, _, image) in enumerate(chunk):
        batch[row] = image_io.resize_bilinear(image, size)
      maps, scores = (np.asarray(a) for a in predict(batch))
      records = []
      for row, (i, path, image) in enumerate(chunk):
        score = float(scores[row])
        anomalous = bool(score >= threshold)
        records.append({"file": str(path), "score": score, "normalized_score": normalize(score),
                        "threshold": float(threshold), "anomalous": anomalous})
        if write_overlays:
          full_map = image_io.resize_bilinear(maps[row].astype(np.float32), image.shape[:2])
          picture = visualize.panel(
              image, np.clip(full_map, 0.0, 1.0), pixel_threshold,
              title=f"{path.name}  score {score:.3f}  "
                    f"{'ANOMALOUS' if anomalous else 'normal'} (threshold {threshold:.3f})")
          visualize.save_png(out_dir / names[i], picture)
      log.add(records)
  finally:
    log.close()
  return log.records, log.errors


def summary(records: list[dict[str, Any]], errors: list[dict[str, str]], out_dir) -> str:
  """The line predict.py and the runner print at the end."""
  line = (f"{len(records)} images scored, {sum(r['anomalous'] for r in records)} anomalous "
          f"-> {out_dir}")
  if errors:
    line += (f"; {len(errors)} could not be read (listed in "
             f"{Path(out_dir) / ERRORS_FILE}): {errors[0]['file']}"
             + (" and others" if len(errors) > 1 else ""))
  return line
