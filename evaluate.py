"""Evaluates a trained run: `python evaluate.py --workdir DIR [--checkpoint STEP]`.

Restores the run's config and checkpoint, computes image AUROC, pixel AUROC, pixel AP, AU-PRO
and image F1-max (overall and per defect type), and writes `DIR/eval/<step>/`: metrics.json,
comparison.md (next to the paper's numbers), scores.csv, report.html and
overlays/<defect>/<name>.png. An evaluation with another protocol or resolution than the run's
own (--protocol, --full_resolution) goes to `DIR/eval/<step>/<protocol>[_full_resolution]/`
and leaves training's evaluation (which predict.py and export.py read) as it is.
For a run of all MVTec categories (`configs/mvtec.py:all`: DIR/<category>/ per category),
evaluates each and writes `DIR/summary.md` and `DIR/report.html` (`DIR/eval_<name>/` for
another protocol or resolution).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from draem_jax import inference
from draem_jax.errors import ConfigError, DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "A folder written by train.py.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: newest).")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", None, ["paper", "standard"],
    "Ground-truth rule: 'paper' (bilinear resize, only exactly 1.0 is anomalous, as the "
    "published numbers) or 'standard' (>= 0.5). Default: the run's eval.protocol.")
_FULL_RESOLUTION = flags.DEFINE_bool(
    "full_resolution", None, "Also compute AU-PRO at the original image resolution "
    "(default: the run's eval.aupro_full_resolution).")
_OVERLAYS = flags.DEFINE_bool("overlays", None, "Write overlay PNGs (default: the run's "
                              "eval.write_overlays).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval/<step>, or its "
                           "<protocol>[_full_resolution] sub-folder for settings other than "
                           "the run's).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    inference.evaluate_workdir(_WORKDIR.value, step=_CHECKPOINT.value, protocol=_PROTOCOL.value,
                               full_resolution=_FULL_RESOLUTION.value,
                               write_overlays=_OVERLAYS.value, out_dir=_OUT.value)
  except (ConfigError, DataError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
