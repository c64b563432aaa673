"""Scores images with an exported ONNX model; needs only numpy, Pillow and onnxruntime.

  python -m draem_jax.deployment.runner --model model.onnx --images 'parts/*.png' --out predictions/
      [--threshold T] [--batch_size B] [--no_overlays]

Reads `model.json` beside the ONNX file (export.py writes it), resizes each image exactly as
the training images were, scores them B at a time (a model exported with a fixed batch
--batch N takes batches of N, the last one padded) and writes what predict.py writes:
`scores.csv` (growing as batches are scored), `scores.json` and one overlay PNG per image
(image | heatmap overlay | predicted mask, at the image's own resolution); both are the loop of
`draem_jax.scoring` over a `draem_jax.Detector`. Files that cannot be read are listed in
`errors.csv` and the others scored; the exit status is then 1. Imports no JAX module (tests
check `sys.modules`).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from draem_jax import image_io
from draem_jax import scoring
from draem_jax.errors import ConfigError, DataError


find_images = image_io.find_images


class Model:
  """An exported model: the onnxruntime session and its metadata JSON."""

  def __init__(self, path: str | Path, threshold: float | None = None, session_options=None):
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
      raise DataError(f"--model {path} does not exist; write it with export.py.")
    if not meta_path.is_file():
      raise DataError(f"{meta_path} (written by export.py beside the ONNX file) is missing.")
    try:
      self.meta = json.loads(meta_path.read_text())
      # Exports that predate the recorded preprocessing: a square side, stretched.
      self.preprocess = (image_io.Preprocess.from_metadata(self.meta["preprocess"])
                         if "preprocess" in self.meta
                         else image_io.Preprocess(image_io.size_hw(self.meta["image_size"])))
      self.size = self.preprocess.size  # (height, width) of the model's input.
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
      raise DataError(f"{meta_path} is not the metadata export.py writes ({e!r}); export the "
                      "model again with export.py, which writes it beside the ONNX file.") from e
    try:
      self.session = ort.InferenceSession(str(path), session_options,
                                          providers=["CPUExecutionProvider"])
    except Exception as e:  # pylint: disable=broad-except  # onnxruntime's own error types.
      raise DataError(f"--model {path} is not a readable ONNX model ({e}); export it again "
                      "with export.py.") from e
    self.threshold = self.meta.get("image_threshold") if threshold is None else threshold
    if self.threshold is None:
      raise ConfigError(f"{meta_path} holds no image_threshold (evaluate.py was not run "
                        "before export.py): pass --threshold.")
    self.pixel_threshold = float(self.meta.get("pixel_threshold", 0.5))
    # Min-max statistics of the validation split (export of a run that has one), else None.
    self.normalization = self.meta.get("normalization") or None

  def normalized(self, score: float) -> float | None:
    """The score with the threshold at 0.5, as predict.py's `normalized_score` (None without
    validation statistics). Same formula as `metrics.normalize_scores`, which needs scipy."""
    if not self.normalization:
      return None
    span = max(self.normalization["image_max"] - self.normalization["image_min"], 1e-12)
    return float(np.clip((score - self.threshold) / span + 0.5, 0.0, 1.0))

  def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) float32 in [0, 1] -> maps (N, H, W), scores (N,) (N: the model's fixed
    batch if it was exported with one; `draem_jax.Detector` pads to it)."""
    if batch.ndim != 4 or batch.shape[1:] != (*self.size, 3):
      raise DataError(f"images must be (N, {self.size[0]}, {self.size[1]}, 3) RGB, got "
                      f"{batch.shape}; resize with draem_jax.image_io.model_input.")
    maps, scores = self.session.run(None, {"image": batch.astype(np.float32)})
    return maps, scores


def score_images(detector, paths: list[Path], out_dir: Path,
                 write_overlays: bool = True) -> scoring.Scored:
  """Scores `paths` with a `draem_jax.Detector` in its batches (`scoring.score_files`); writes
  overlays, scores.csv, scores.json and errors.csv like predict.py."""
  return scoring.score_files(detector, paths, out_dir, write_overlays=write_overlays)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="model.onnx written by export.py")
  parser.add_argument("--images", required=True, help="an image, a folder or a quoted glob")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--threshold", type=float, default=None)
  parser.add_argument("--no_overlays", action="store_true")
  parser.add_argument("--batch_size", type=int, default=8,
                      help="images per session call (a model exported with a fixed batch "
                           "takes its own)")
  args = parser.parse_args(argv)
  try:
    if args.batch_size < 1:
      raise ConfigError(f"--batch_size={args.batch_size} must be at least 1.")
    out_dir = scoring.check_out_dir(args.out)  # Before the model loads.
    paths = find_images(args.images)
    from draem_jax.detector import Detector  # pylint: disable=g-import-not-at-top
    detector = Detector.from_onnx(args.model, args.threshold, batch_size=args.batch_size)
    records = score_images(detector, paths, out_dir, not args.no_overlays)
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(scoring.summary(records, records.errors, out_dir))
  return 1 if records.errors else 0


if __name__ == "__main__":
  sys.exit(main())
