"""Atomic writes: complete files or the previous version, never half of one."""

import json
import os

import pytest

from draem_jax import fileio


def test_writes_text_bytes_json_and_creates_folders(tmp_path):
  fileio.atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
  fileio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
  fileio.atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
  assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
  assert (tmp_path / "c.json").read_text().endswith("\n")
  umask = os.umask(0)
  os.umask(umask)
  assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "metrics.json"
  fileio.atomic_write_text(path, "old")

  def fail(f):
    f.write(b"half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    fileio.atomic_write(path, fail)
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
