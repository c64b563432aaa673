"""Trains DRAEM: `python train.py --config configs/mvtec.py[:category] [--workdir DIR]`.

A flag wrapper around `draem_jax.train` (draem_jax/api.py). Config fields can be overridden,
e.g. `--config.train.batch_size=16`. Running the same command again with the same workdir
resumes the run from its newest checkpoint.
"""

import re
import sys
from pathlib import Path

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from draem_jax import api
from draem_jax.training import trainer
from draem_jax.errors import ConfigError, DataError, DistributedError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mvtec.py or configs/mvtec.py:screw.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the run lives (config, metrics, checkpoints, evaluation). "
    "Default: workdirs/<data.category>.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a run in --workdir although the config changes "
    "how it trains (e.g. more train.num_steps, another optim.learning_rate). Without it such a "
    "restart is refused; with it the replaced config is kept in config_history.jsonl.")


_CONFIGS = Path(__file__).resolve().parent / "configs"


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line instead of a traceback for a bad --config.

  ml_collections reports an unloadable config file only when the config is first read, and an
  override of a field the config does not have as a bare AttributeError / KeyError.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # Malformed values: absl's message names the flag.
    _fail(f"{e}")
  except (AttributeError, KeyError, OSError) as e:
    _fail(_describe_config_error(argv, e))
  try:
    _CONFIG.value.keys()  # An unloadable file raises here.
  except OSError as e:
    _fail(_describe_config_error(argv, e))
  except flags.UnparsedFlagAccessError:
    pass  # --config missing: absl reports the required flag.
  return rest


def _config_argument(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _describe_config_error(argv: list[str], error: Exception) -> str:
  """The one-line message for a config file that does not load or an unknown override."""
  if isinstance(error, OSError):
    value = _config_argument(argv)
    path = value.split(":", 1)[0]
    if path and not Path(path).is_file():
      return (f"--config {value}: the file {path} does not exist; use one of "
              f"{', '.join(sorted(f'configs/{p.name}' for p in _CONFIGS.glob('[!_]*.py')))} "
              "(e.g. --config configs/mvtec.py:bottle).")
    cause = " ".join(str(error).split())
    return f"--config {value} could not be loaded: {cause}"
  # The missing name, as ml_collections quotes it: "'bogus'".
  name = str(error).strip("\"'")
  overrides = [a for a in argv if a.startswith("--config.")]
  bad = [a for a in overrides
         if name in re.split(r"[.=]", a.removeprefix("--config.").split("=", 1)[0])]
  flag = bad[0] if bad else (overrides[0] if overrides else "--config")
  field = flag.removeprefix("--config.").split("=", 1)[0]
  return (f"{flag}: the config has no field {field}; the fields and their meaning are in "
          "configs/mvtec.py (e.g. --config.train.batch_size=16).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  workdir = _WORKDIR.value or f"workdirs/{config.data.category}"
  logging.info("workdir: %s", workdir)
  try:
    api.train(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (ConfigError, DataError, DistributedError, trainer.TrainingDivergedError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process.


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
