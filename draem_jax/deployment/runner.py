"""Scores images with an exported ONNX model; needs only numpy, Pillow and onnxruntime.

  python -m draem_jax.deployment.runner --model model.onnx --images 'parts/*.png' --out predictions/

Reads `model.json` beside the ONNX file (export.py writes it), resizes each image exactly as
the training images were and writes what predict.py writes: `scores.csv`, `scores.json` and
one overlay PNG per image (image | heatmap overlay | predicted mask, at the image's own
resolution); both are loops over `draem_jax.Detector`. Imports no JAX module (tests check
`sys.modules`).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from draem_jax import fileio
from draem_jax import image_io
from draem_jax.evaluation import visualize
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
    self.meta = json.loads(meta_path.read_text())
    try:
      self.session = ort.InferenceSession(str(path), session_options,
                                          providers=["CPUExecutionProvider"])
    except Exception as e:  # pylint: disable=broad-except  # onnxruntime's own error types.
      raise DataError(f"--model {path} is not a readable ONNX model ({e}); export it again "
                      "with export.py.") from e
    # Exports that predate the recorded preprocessing: a square side, stretched, no antialias.
    self.preprocess = (image_io.Preprocess.from_metadata(self.meta["preprocess"])
                       if "preprocess" in self.meta
                       else image_io.Preprocess(image_io.size_hw(self.meta["image_size"])))
    self.size = self.preprocess.size  # (height, width) of the model's input.
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
    """(N, H, W, 3) float32 in [0, 1] -> maps (N, H, W), scores (N,)."""
    if batch.ndim != 4 or batch.shape[1:] != (*self.size, 3):
      raise DataError(f"images must be (N, {self.size[0]}, {self.size[1]}, 3) RGB, got "
                      f"{batch.shape}; resize with draem_jax.image_io.model_input.")
    maps, scores = self.session.run(None, {"image": batch.astype(np.float32)})
    return maps, scores


def score_images(detector, paths: list[Path], out_dir: Path,
                 write_overlays: bool = True) -> list[dict]:
  """Scores `paths` one by one with a `draem_jax.Detector`; writes overlays, scores.csv and
  scores.json like predict.py."""
  records, seen = [], {}
  for path in paths:
    result = detector.predict(path)
    records.append(result.record())
    if write_overlays:
      count = seen.get(path.stem, 0)
      seen[path.stem] = count + 1
      name = f"{path.stem}.png" if count == 0 else f"{path.stem}_{count}.png"
      visualize.save_png(out_dir / name, result.panel())
  fileio.write_scores(out_dir, records)
  return records


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="model.onnx written by export.py")
  parser.add_argument("--images", required=True, help="an image, a folder or a quoted glob")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--threshold", type=float, default=None)
  parser.add_argument("--no_overlays", action="store_true")
  args = parser.parse_args(argv)
  try:
    from draem_jax.detector import Detector  # pylint: disable=g-import-not-at-top
    detector = Detector.from_onnx(args.model, args.threshold)
    records = score_images(detector, find_images(args.images), Path(args.out),
                           not args.no_overlays)
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(records)} images scored, {sum(r['anomalous'] for r in records)} anomalous "
        f"-> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
