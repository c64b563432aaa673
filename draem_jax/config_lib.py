"""Checking, saving and loading experiment configs.

`validate_config` runs before any compute and raises one `ConfigError` naming the field. The
data fields (paths, category, image size) are checked by `draem_jax.data`. A run's config is
saved as `workdir/config.json`, which `evaluate.py` and `predict.py` read back.
"""

import dataclasses
import datetime
import json
import os
from pathlib import Path

import ml_collections

from draem_jax import fileio
from draem_jax import image_io
from draem_jax.data import folder as folder_lib
from draem_jax.models.layers import LAYER_IMPLS
from draem_jax.simulation import simulator
from draem_jax.errors import ConfigError

CONFIG_FILE = "config.json"
PROTOCOLS = ("paper", "standard")
# eval.image_score: the paper's, and two alternatives steadier under global lighting changes
# (draem_jax.evaluation.evaluator.image_score).
IMAGE_SCORES = ("paper", "minus_median", "p99")
DTYPES = ("float32", "bfloat16")
# model.variant: DRAEM, and the paper's single-network ablations (draem_jax.models.VARIANTS).
MODEL_VARIANTS = ("draem", "disc_only", "recon_ae")


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
  _require(config.model.get("layer_impl", "auto") in LAYER_IMPLS, "model.layer_impl",
           config.model.get("layer_impl"), f"must be one of {LAYER_IMPLS}.")
  variant = config.model.get("variant", "draem")
  _require(variant in MODEL_VARIANTS, "model.variant", variant,
           f"must be one of {MODEL_VARIANTS}.")
  sspcab = config.model.get("sspcab", False)
  _require(isinstance(sspcab, bool), "model.sspcab", sspcab, "must be True or False.")
  _require(not (sspcab and variant == "disc_only"), "model.sspcab", sspcab,
           "replaces a block of the reconstructive network, which model.variant='disc_only' "
           "does not have.")
  sspcab_lambda = config.model.get("sspcab_lambda", 0.1)
  _require(isinstance(sspcab_lambda, (int, float)) and not isinstance(sspcab_lambda, bool)
           and sspcab_lambda >= 0, "model.sspcab_lambda", sspcab_lambda,
           "must be a number >= 0 (0.1 as in anomalib).")
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
  _require(ev.get("image_score", "paper") in IMAGE_SCORES, "eval.image_score",
           ev.get("image_score"), f"must be one of {IMAGE_SCORES}.")
  _require(isinstance(ev.mean_filter_size, int) and ev.mean_filter_size > 0
           and ev.mean_filter_size % 2 == 1, "eval.mean_filter_size", ev.mean_filter_size,
           "must be a positive odd integer (21 in the paper).")
  fraction = ev.get("mean_filter_fraction", 0.0)
  _require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
           and 0 <= fraction < 1, "eval.mean_filter_fraction", fraction,
           "must be in [0, 1): 0 = eval.mean_filter_size, else that share of the short side "
           "(21/256 in the paper).")
  tile = ev.get("tile_size", 0)
  if tile != 0:
    try:
      tile_hw = image_io.size_hw(tile, "eval.tile_size")
      image_hw = image_io.size_hw(config.data.image_size)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    _require(min(tile_hw) > 0 and tile_hw[0] % 32 == 0 and tile_hw[1] % 32 == 0
             and tile_hw[0] <= image_hw[0] and tile_hw[1] <= image_hw[1], "eval.tile_size",
             tile, f"must be 0 (whole image) or a multiple of 32 no larger than "
             f"data.image_size={config.data.image_size!r}.")
  overlap = ev.get("tile_overlap", 0.25)
  _require(isinstance(overlap, (int, float)) and 0 <= overlap < 1, "eval.tile_overlap",
           overlap, "must be in [0, 1).")
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


# Fields that do not change what a run computes: how it logs, evaluates, checkpoints and
# feeds its data (the decoded cache, workers and prefetching deliver the same batches), and
# where the prepared TFDS files and the distributed runtime are. Every other field of data,
# simulator, model, optim and train (new fields included) alters the training trajectory.
_FREE_GROUPS = ("eval", "checkpoint")
_FREE_FIELDS = frozenset({
    "data.num_workers", "data.prefetch_buffer_size", "data.cache_decoded", "data.tfds_data_dir",
    "simulator.batching",  # "map" and "vmap" compute the same draws; "auto" picks per backend.
    "model.layer_impl",  # Same parameters and numbers (up to rounding) with either layer set.
    "train.log_every_steps", "train.eval_every_steps",
})
_FREE_PREFIXES = ("train.distributed", "train.coordinator", "train.num_processes",
                  "train.process_id", "train.initialization_timeout")
HISTORY_FILE = "config_history.jsonl"
_ABSENT = "(absent)"


def _absent_defaults() -> dict[str, object]:
  """What the code uses for a field a config.json does not have (one written before the field
  existed): the simulator's dataclass defaults and the `.get` defaults of the readers. Each
  reproduces the behaviour the run had before the field was added."""
  out = {f"simulator.{f.name}": f.default for f in dataclasses.fields(simulator.SimulatorConfig)}
  out.update({
      "data.train_list": "", "data.validation_fraction": 0.0, "data.validation_min_images": 1,
      "data.mask_pattern": folder_lib.DEFAULT_MASK_PATTERN, "data.mask_root": "", "data.cache_decoded": True,
      "eval.image_score": "paper", "eval.threshold_method": "f1", "eval.target_fpr": 0.01,
      "eval.sensitivity": 0.5, "eval.aupro_full_resolution": False,
      "data.resize": "stretch", "data.resize_antialias": False, "data.crop_size": 0,
      "eval.mean_filter_fraction": 0.0, "eval.tile_size": 0, "eval.tile_overlap": 0.25,
      "data.max_textures": 0, "model.variant": "draem", "model.sspcab": False,
      "model.sspcab_lambda": 0.1,
  })
  return out


# Field -> the value a config without the field behaves as (see `_absent_defaults`).
ABSENT_DEFAULTS = _absent_defaults()


def _same(a, b, field: str) -> bool:
  """Equal values, or a field absent on one side whose other side is the absent default."""
  if a == b:
    return True
  if field in ABSENT_DEFAULTS and _ABSENT in (a, b):
    value = b if a == _ABSENT else a
    default = ABSENT_DEFAULTS[field]
    return value == default and isinstance(value, bool) == isinstance(default, bool)
  return False


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, f"{name}."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def _alters_trajectory(field: str) -> bool:
  group = field.split(".", 1)[0]
  return not (group in _FREE_GROUPS or field in _FREE_FIELDS
              or field.startswith(_FREE_PREFIXES))


def config_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                   trajectory_only: bool = True) -> dict[str, tuple[object, object]]:
  """Fields whose values differ between two configs: {field: (saved value, new value)}.

  A field present in only one of them counts as changed ("(absent)" on the other side),
  unless its value there is what a config without the field behaves as (`ABSENT_DEFAULTS`):
  a config.json written before a field existed resumes under a config that has it.

  Args:
    saved: the config a run was trained with (config.json).
    config: the config it is started with now.
    trajectory_only: only fields that alter the training trajectory (everything except
      logging, evaluation, checkpointing, data-loading mechanics and the distributed runtime).
  """
  old, new = _flatten(saved.to_dict()), _flatten(config.to_dict())
  changes = {}
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, _ABSENT), new.get(field, _ABSENT)
    if not _same(a, b, field) and (not trajectory_only or _alters_trajectory(field)):
      changes[field] = (a, b)
  return changes


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                    workdir: str | os.PathLike, allow_change: bool = False) -> dict:
  """Refuses to resume a run with a config that would change how it trains.

  Exact resume holds only when every field that alters the trajectory (data, simulator,
  model, optimiser, schedule length, seed, ...) is the one the run was trained with; logging,
  evaluation and checkpoint settings may change between restarts.

  Args:
    saved: the run's config.json.
    config: the config of this start.
    workdir: the run's folder (named in the message).
    allow_change: accept trajectory changes (`train.py --allow_config_change`): the run then
      continues from its checkpoint under the new config, and `save_config` keeps the old
      config in config_history.jsonl.

  Returns:
    The trajectory changes {field: (old, new)} (empty when the configs agree).

  Raises:
    ConfigError: listing every changed field with its old and new value, unless allow_change.
  """
  changes = config_changes(saved, config)
  if changes and not allow_change:
    listed = "; ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in changes.items())
    raise ConfigError(
        f"{Path(workdir) / CONFIG_FILE} holds a run trained with another config, and resuming "
        f"it with this one would not continue it exactly: {listed}. Use a new --workdir for a "
        "new run, pass the saved values to resume it, or add --allow_config_change to continue "
        f"this run under the new config (the old one is kept in {HISTORY_FILE}).")
  return changes


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                step: int | None = None) -> Path:
  """Writes `workdir/config.json` atomically; returns its path.

  When config.json already holds a different config, that one is first appended to
  `workdir/config_history.jsonl` (one JSON object a line: the time, the checkpoint step the run
  continued from, the changed fields and the full replaced config), so the record of how every
  part of a run was trained is never lost.

  Args:
    config: the config of this start.
    workdir: the run's folder.
    step: the newest checkpoint's step at this start (None for a fresh run).
  """
  workdir = Path(workdir)
  path = workdir / CONFIG_FILE
  if path.is_file():
    saved = load_config(workdir)
    changes = config_changes(saved, config, trajectory_only=False)
    if changes:
      entry = {"replaced_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "resumed_from_step": step,
               "changed": {k: [a, b] for k, (a, b) in changes.items()},
               "config": saved.to_dict()}
      history = workdir / HISTORY_FILE
      previous = history.read_text() if history.is_file() else ""
      fileio.atomic_write_text(history, previous + json.dumps(entry, sort_keys=True) + "\n")
  return fileio.atomic_write_json(path, config.to_dict(), sort_keys=True)


def load_history(workdir: str | os.PathLike) -> list[dict]:
  """The configs a run's config.json replaced, oldest first (see `save_config`)."""
  history = Path(workdir) / HISTORY_FILE
  if not history.is_file():
    return []
  return [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
