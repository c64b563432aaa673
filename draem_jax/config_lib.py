"""Checking, saving and loading experiment configs.

`validate_config` runs before any compute and raises one `ConfigError` naming the field. The
data fields (paths, category, image size) are checked by `draem_jax.data`. A run's config is
saved as `workdir/config.json`, which `evaluate.py` and `predict.py` read back.
"""

import json
import os
from pathlib import Path

import ml_collections

from draem_jax import fileio
from draem_jax import simulator
from draem_jax.errors import ConfigError

CONFIG_FILE = "config.json"
PROTOCOLS = ("paper", "standard")
DTYPES = ("float32", "bfloat16")


def _require(condition: bool, field: str, value, expectation: str):
  if not condition:
    raise ConfigError(f"{field}={value!r} {expectation}")


def _positive_int(config, field: str):
  group, name = field.split(".")
  value = config[group][name]
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field, value,
           "must be a positive integer.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every non-data field; raises ConfigError naming the first bad one.

  Data fields (source, root, category, image size, workers) are checked with the file system
  by `draem_jax.data.validate_data_config`.
  """
  for group in ("data", "simulator", "model", "optim", "train", "eval", "checkpoint"):
    if group not in config:
      raise ConfigError(f"config has no '{group}' group; start from configs/mvtec.py.")
  # Model.
  _require(config.model.dtype in DTYPES, "model.dtype", config.model.dtype,
           f"must be one of {DTYPES}.")
  for field in ("model.recon_width", "model.disc_width"):
    _positive_int(config, field)
  # Optimisation.
  optim = config.optim
  _require(optim.learning_rate > 0, "optim.learning_rate", optim.learning_rate,
           "must be positive.")
  fractions = tuple(optim.decay_fractions)
  _require(all(0 < f <= 1 for f in fractions) and list(fractions) == sorted(fractions),
           "optim.decay_fractions", fractions, "must be increasing fractions in (0, 1].")
  _require(0 < optim.decay_factor <= 1, "optim.decay_factor", optim.decay_factor,
           "must be in (0, 1].")
  _require(0 <= optim.b1 < 1 and 0 <= optim.b2 < 1, "optim.b1/b2", (optim.b1, optim.b2),
           "must be in [0, 1).")
  # Training loop.
  train = config.train
  _positive_int(config, "train.batch_size")
  _require(isinstance(train.num_steps, int) and (train.num_steps > 0 or train.num_steps == -1),
           "train.num_steps", train.num_steps, "must be a positive number of steps, or -1 to "
           "use train.num_epochs.")
  if train.num_steps == -1:
    _positive_int(config, "train.num_epochs")
  _positive_int(config, "train.log_every_steps")
  _require(isinstance(train.eval_every_steps, int) and train.eval_every_steps >= 0,
           "train.eval_every_steps", train.eval_every_steps,
           "must be >= 0 (0 = evaluate only at the end).")
  # Evaluation.
  ev = config.eval
  _positive_int(config, "eval.batch_size")
  _require(ev.protocol in PROTOCOLS, "eval.protocol", ev.protocol, f"must be one of {PROTOCOLS}.")
  _require(isinstance(ev.mean_filter_size, int) and ev.mean_filter_size > 0
           and ev.mean_filter_size % 2 == 1, "eval.mean_filter_size", ev.mean_filter_size,
           "must be a positive odd integer (21 in the paper).")
  _require(0 < ev.aupro_fpr_limit <= 1, "eval.aupro_fpr_limit", ev.aupro_fpr_limit,
           "must be in (0, 1].")
  method = ev.get("threshold_method", "f1")
  _require(method in ("f1", "fpr"), "eval.threshold_method", method,
           "must be 'f1' (F1-max on the synthetic validation split) or 'fpr' (eval.target_fpr).")
  _require(0 <= ev.get("target_fpr", 0.01) < 1, "eval.target_fpr", ev.get("target_fpr"),
           "must be in [0, 1).")
  _require(0 < ev.get("sensitivity", 0.5) < 1, "eval.sensitivity", ev.get("sensitivity"),
           "must be in (0, 1) (0.5 = the threshold as chosen; higher flags more images).")
  # Checkpoints.
  _positive_int(config, "checkpoint.every_steps")
  _positive_int(config, "checkpoint.max_to_keep")
  # Simulator: its own dataclass checks ranges and names the field.
  simulator.SimulatorConfig.from_config(config.simulator)


def for_category(config: ml_collections.ConfigDict, category: str) -> ml_collections.ConfigDict:
  """A copy of `config` for one category (runs of `data.category='all'`)."""
  sub = ml_collections.ConfigDict(config.to_dict())
  sub.data.category = category
  return sub


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
  """Writes `workdir/config.json` atomically; returns its path."""
  return fileio.atomic_write_json(Path(workdir) / CONFIG_FILE, config.to_dict(),
                                  sort_keys=True)


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads the config a run saved in `workdir/config.json`."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise ConfigError(f"{path} does not exist: --workdir must be a folder written by "
                      "train.py (it holds config.json and checkpoints/).")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}); it was not written by train.py or was "
                      "edited by hand.") from e


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                    workdir: str | os.PathLike) -> None:
  """Refuses to resume a run whose model or data would silently change.

  Fields that fix the shapes of the state or the meaning of the step counter must match;
  everything else (logging, evaluation, checkpoint frequency) may change between restarts.
  """
  fixed = ("model.recon_width", "model.disc_width", "data.image_size", "data.category",
           "data.source", "train.batch_size", "train.seed", "data.validation_fraction",
           "data.validation_min_images")
  for field in fixed:
    group, name = field.split(".")
    old, new = saved[group].get(name, 0.0), config[group].get(name, 0.0)
    if name == "validation_min_images" and not saved.data.get("validation_fraction", 0.0):
      continue  # Without a validation split the minimum changes nothing.
    if old != new:
      raise ConfigError(
          f"{field}={new!r} differs from {old!r} in {Path(workdir) / CONFIG_FILE}: this workdir "
          "holds another run. Use a new --workdir, or the saved value to resume it.")
