"""Exports a trained run for deployment.

  python export.py --workdir DIR [--checkpoint STEP] [--out FILE.onnx] [--batch N|dynamic]
                   [--int8 [--calibration_images K] [--int8_reduce_range]]

Writes FILE.onnx (input `image` float32 (N, H, W, 3) RGB in [0, 1]; outputs `anomaly_map`
(N, H, W) and `score` (N,)), FILE.jax_export (the same function as a serialized jax.export
module) and FILE.json (image size, channel order, value range, thresholds, category, step).
With --int8 also FILE.int8.onnx and FILE.int8.json: the 8-bit model for CPUs (3x3 convolutions
quantized by ONNX Runtime, calibrated on K training images), with thresholds chosen again for
its scores and its test-split metrics beside the float model's (draem_jax/deployment/quantize.py).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from draem_jax.deployment import export
from draem_jax.errors import ConfigError, DataError

_WORKDIR = flags.DEFINE_string("workdir", None, "A folder written by train.py.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: newest).")
_OUT = flags.DEFINE_string("out", None, "The ONNX file (default: WORKDIR/export/<step>/"
                           "model.onnx).")
_BATCH = flags.DEFINE_string("batch", export.DYNAMIC_BATCH, "A fixed batch size, or 'dynamic'.")
_INT8 = flags.DEFINE_bool("int8", False, "Also write the 8-bit ONNX model FILE.int8.onnx.")
_CALIBRATION = flags.DEFINE_integer(
    "calibration_images", export.CALIBRATION_IMAGES,
    "Training images that calibrate the 8-bit model's activation ranges.")
_REDUCE_RANGE = flags.DEFINE_bool(
    "int8_reduce_range", False, "7-bit weights in the 8-bit model: for x86 CPUs without VNNI "
    "(AVX2 only), whose ONNX Runtime int8 kernels can saturate with full-range weights.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    paths = export.export_run(_WORKDIR.value, _OUT.value, step=_CHECKPOINT.value,
                              batch=_BATCH.value, int8=_INT8.value,
                              calibration_images=_CALIBRATION.value,
                              int8_reduce_range=_REDUCE_RANGE.value)
  except (ConfigError, DataError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for kind, path in paths.items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
