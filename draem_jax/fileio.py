"""Atomic file writes: a reader (or a process killed mid-write) never sees half a file.

Every file a run writes for its user (config.json, metrics, eval outputs, pictures, exported
models) goes through here: the content goes to a temporary file in the same folder, is flushed
to disk, and replaces the target with `os.replace` (atomic on POSIX and Windows). On any error
the temporary file is removed and the previous version of the target, if any, is left intact.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
  """Calls `write(f)` on a temporary binary file beside `path`, then renames it to `path`.

  Args:
    path: the target file; its parent folder is created if missing.
    write: writes the content to the open binary file it is given (e.g. `Image.save`).

  Returns:
    `path` as a Path.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates 0600 files; give the result the permissions of a normally created file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes `data` to `path` atomically."""
  return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` (UTF-8) to `path` atomically."""
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps_kwargs) -> Path:
  """Writes `value` as indented JSON (plus a final newline) to `path` atomically."""
  dumps_kwargs.setdefault("indent", 2)
  return atomic_write_text(path, json.dumps(value, **dumps_kwargs) + "\n")


SCORE_COLUMNS = ("file", "score", "normalized_score", "threshold", "anomalous")
SCORES_CSV, SCORES_JSON = "scores.csv", "scores.json"


def csv_rows(records: list[dict]) -> list[dict]:
  """Scored-image records (SCORE_COLUMNS) as rows of scores.csv (predict.py and the ONNX runner
  alike, `draem_jax.scoring`): a `normalized_score` of None (no validation statistics) is an
  empty cell (a JSON null in scores.json)."""
  return [dict(r, normalized_score="" if r["normalized_score"] is None
               else r["normalized_score"]) for r in records]
