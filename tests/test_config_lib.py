"""Config files on the command line and config.json across versions of the code."""

import json
import os
import subprocess
import sys

import pytest

import helpers
from draem_jax import config_lib
from draem_jax.errors import ConfigError


def _train_cli(*args):
  return subprocess.run([sys.executable, "train.py", *args], cwd=helpers.REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("args, expected", [
    (["--config", "configs/nope.py"],
     "--config configs/nope.py: the file configs/nope.py does not exist; use one of "),
    (["--config", "configs/mvtec_cpu.py", "--config.train.bogus=1"],
     "--config.train.bogus=1: the config has no field train.bogus"),
    (["--config=configs/mvtec_cpu.py", "--config.bogus.x=1"],
     "--config.bogus.x=1: the config has no field bogus.x"),
])
def test_item13_bad_config_flag_is_one_line_not_a_traceback(args, expected, tmp_path):
  done = _train_cli(*args, f"--workdir={tmp_path / 'w'}")
  assert done.returncode == 2, done.stderr[-2000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), done.stderr[-3000:]
  if "nope" in expected:  # The configs that exist, listed.
    assert "configs/mvtec.py, configs/mvtec_cpu.py" in lines[0] and "__init__" not in lines[0]
  assert not (tmp_path / "w").exists()


def _saved_before_fields(config, fields):
  """`config` as a config.json written before `fields` existed."""
  saved = json.loads(json.dumps(config.to_dict()))
  for field in fields:
    group, name = field.split(".")
    del saved[group][name]
  return config_lib.ml_collections.ConfigDict(saved)


def test_item15_field_missing_from_an_older_config_json_is_no_change(tmp_path):
  config = helpers.tiny_config()
  newer = ["simulator.jitter_brightness", "simulator.jitter_contrast", "simulator.jitter_gamma",
           "eval.image_score", "data.validation_fraction", "data.mask_root",
           "data.train_list", "data.resize", "data.resize_antialias", "data.crop_size",
           "eval.tile_size", "eval.tile_overlap", "eval.mean_filter_fraction"]
  saved = _saved_before_fields(config, newer)
  assert config_lib.config_changes(saved, config, trajectory_only=False) == {}
  assert config_lib.check_resumable(saved, config, tmp_path) == {}
  # Written to disk and read back (config.json of a run): still no change, no history entry.
  config_lib.save_config(saved, tmp_path)
  config_lib.save_config(config, tmp_path, step=4)
  assert config_lib.load_history(tmp_path) == []
  # A value other than the one the old run behaved as is a change, named with "(absent)".
  config.simulator.jitter_gamma = 0.2
  with pytest.raises(ConfigError, match=r"simulator.jitter_gamma: '\(absent\)' -> 0.2"):
    config_lib.check_resumable(saved, config, tmp_path)
  # configs/folder.py holds out 10% by default; a run from before the field held out nothing.
  config.simulator.jitter_gamma = 0.0
  config.data.validation_fraction = 0.1
  assert "data.validation_fraction" in config_lib.config_changes(saved, config)
  # And the other way round: an old config file resuming a newer run.
  config.data.validation_fraction = 0.0
  assert config_lib.config_changes(config, saved) == {}


def test_item15_absent_defaults_match_the_readers_defaults():
  """Each absent default is what configs/mvtec.py sets today, except where the reader's own
  default (kept for old config.json files) differs, listed here."""
  base = helpers.mvtec.get_config("bottle")
  for field, value in config_lib.ABSENT_DEFAULTS.items():
    group, name = field.split(".")
    expected = {"data.validation_min_images": 1}.get(field, base[group][name])
    assert value == expected, field
