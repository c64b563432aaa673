"""Scores new images with a trained run.

  python predict.py --workdir DIR --images 'parts/*.png' --out predictions/

Images may have any size and be RGB or grayscale. Writes one PNG per image (image | heatmap
overlay | predicted mask) and scores.csv / scores.json with each image's raw score, normalised
score (threshold at 0.5) and decision; scores.csv grows as batches are scored. Files that
cannot be read are listed in errors.csv and the rest scored (exit status 1). The threshold is
the one chosen on the run's validation split (thresholds.json, chosen now if the checkpoint
has none; --sensitivity moves it), else the test-set F1-max threshold of the run's own
evaluation, or --threshold; export.py follows the same rule. The console says what the
threshold's figures are: real defects of the test split first, synthetic anomalies after.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from draem_jax import inference
from draem_jax import scoring
from draem_jax.errors import ConfigError, DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "A folder written by train.py.")
_IMAGES = flags.DEFINE_string("images", None, "An image, a folder, or a quoted glob pattern.")
_OUT = flags.DEFINE_string("out", None, "Output folder for overlays and scores.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: newest).")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Image-score threshold (default: the F1-max "
                                "threshold from evaluate.py for this checkpoint).")
_SENSITIVITY = flags.DEFINE_float(
    "sensitivity", None, "In (0, 1): moves the validation split's threshold; 0.5 = as chosen, "
    "higher flags more images (default: the run's eval.sensitivity).")
_OVERLAYS = flags.DEFINE_bool("overlays", True, "Write an overlay PNG per image.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    records = inference.predict_images(_WORKDIR.value, _IMAGES.value, _OUT.value,
                                       step=_CHECKPOINT.value, threshold=_THRESHOLD.value,
                                       write_overlays=_OVERLAYS.value,
                                       sensitivity=_SENSITIVITY.value)
  except (ConfigError, DataError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(scoring.summary(records, records.errors, _OUT.value))
  if records.errors:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "images", "out"])
  app.run(main)
