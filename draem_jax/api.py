"""Training from Python: `load_config` and `train`, what train.py does with its flags.

  import draem_jax
  config = draem_jax.load_config("configs/mvtec.py:screw", {"train.num_steps": 2000})
  metrics = draem_jax.train(config, "workdirs/screw")
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from draem_jax import config_lib
from draem_jax.errors import ConfigError


def _config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file named as train.py's --config: `path.py[:arg]`."""
  path, _, arg = spec.partition(":")
  path = Path(path).expanduser()
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist (give e.g. configs/mvtec.py:screw, "
                      "a run's folder or its config.json).")
  module_spec = importlib.util.spec_from_file_location(f"_draem_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(); it is not a draem-jax config file.")
  return module.get_config(arg) if arg else module.get_config()


def load_config(source: str | os.PathLike | ml_collections.ConfigDict,
                overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A config as train.py builds it from --config and its `--config.a.b=value` overrides.

  Args:
    source: a config file with its optional argument (`configs/mvtec.py:screw`), a run's
      folder or its config.json (the config the run was trained with), or a ConfigDict
      (copied).
    overrides: {"group.field": value}, e.g. {"train.num_steps": 2000, "data.image_size": 128}.

  Returns:
    A new ConfigDict, validated (`config_lib.validate_config`).

  Raises:
    ConfigError: the source cannot be read, an override names no field or has the wrong type,
      or the result is not a valid config; the message names it.
  """
  if isinstance(source, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(source.to_dict())
  else:
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
      config = config_lib.load_config(path)
    elif path.name == config_lib.CONFIG_FILE:
      config = config_lib.load_config(path.parent)
    else:
      config = _config_file(os.fspath(source))
  for field, value in (overrides or {}).items():
    *groups, name = field.split(".")
    node = config
    for group in groups:
      if not isinstance(node, ml_collections.ConfigDict) or group not in node:
        raise ConfigError(f"override {field!r}: the config has no group {group!r}.")
      node = node[group]
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(f"override {field!r}: the config has no such field (see "
                        "configs/mvtec.py for the fields).")
    try:
      node[name] = value
    except TypeError as e:
      raise ConfigError(f"override {field}={value!r}: {e}") from e
  config_lib.validate_config(config)
  return config


def train(config: str | os.PathLike | ml_collections.ConfigDict,
          workdir: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
          allow_config_change: bool = False) -> Any:
  """Trains (or resumes) a run, then evaluates it: train.py's work.

  Args:
    config: a ConfigDict or anything `load_config` reads.
    workdir: where the run lives (default: workdirs/<data.category>, as train.py).
    overrides: {"group.field": value} applied on top (`load_config`).
    allow_config_change: train.py's --allow_config_change.

  Returns:
    The final evaluation metrics (`trainer.train_and_evaluate`).
  """
  from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top
  if overrides or not isinstance(config, ml_collections.ConfigDict):
    config = load_config(config, overrides)
  workdir = workdir or f"workdirs/{config.data.category}"
  return trainer.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
