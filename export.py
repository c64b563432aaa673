"""Exports a trained run for deployment.

  python export.py --workdir DIR [--checkpoint STEP] [--out FILE.onnx] [--batch N|dynamic]

Writes FILE.onnx (input `image` float32 (N, H, W, 3) RGB in [0, 1]; outputs `anomaly_map`
(N, H, W) and `score` (N,)), FILE.jax_export (the same function as a serialized jax.export
module) and FILE.json (image size, channel order, value range, thresholds, category, step).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from draem_jax import export
from draem_jax.errors import ConfigError, DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "A folder written by train.py.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: newest).")
_OUT = flags.DEFINE_string("out", None, "The ONNX file (default: WORKDIR/export/<step>/"
                           "model.onnx).")
_BATCH = flags.DEFINE_string("batch", export.DYNAMIC_BATCH, "A fixed batch size, or 'dynamic'.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    paths = export.export_run(_WORKDIR.value, _OUT.value, step=_CHECKPOINT.value,
                              batch=_BATCH.value)
  except (ConfigError, DataError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for kind, path in paths.items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
