"""Trains DRAEM: `python train.py --config configs/mvtec.py[:category] [--workdir DIR]`.

A flag wrapper around `draem_jax.train` (draem_jax/api.py). Config fields can be overridden,
e.g. `--config.train.batch_size=16`. Running the same command again with the same workdir
resumes the run from its newest checkpoint.
"""

import sys

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
  app.run(main)
