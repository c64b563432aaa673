"""A trained model as a Python object: `Detector.predict(images)` -> maps, scores, decisions.

  from draem_jax import Detector
  detector = Detector.from_onnx("model.onnx")      # numpy + Pillow + onnxruntime, no JAX
  detector = Detector.from_workdir("workdirs/bottle")  # the checkpoint itself, with JAX
  result = detector.predict("part.png")            # or an array, or a list of either
  result.score, result.is_anomalous, result.anomaly_map   # the map at the image's own size
  Image.fromarray(result.overlay())

Both backends do what the scripts do, through the same functions: images are read by
`image_io.as_rgb` and resized by `image_io.model_input`, the decision thresholds are the
run's (predict.py's `inference.decision_thresholds`, or model.json beside the ONNX file), and
pictures are drawn by `evaluation.visualize`. predict.py and the ONNX runner are loops over
`Detector.predict`. This module imports no JAX; `from_workdir` does, when called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from draem_jax import image_io
from draem_jax.errors import DataError
from draem_jax.evaluation import visualize

# One image: a path, the encoded bytes of an image file, or an array (see `image_io.as_rgb`).
ImageLike = Union[str, os.PathLike, bytes, np.ndarray]
# Images per call of a model whose batch is not fixed (ONNX with a dynamic batch).
DEFAULT_BATCH = 8


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One image's result.

  Attributes:
    image: uint8 (H, W, 3) RGB, the input at its own resolution.
    anomaly_map: float32 (H, W) in [0, 1], the model's map resized to the input's size.
    score: the raw image score (the run's eval.image_score).
    normalized_score: the score with the threshold at 0.5, in [0, 1] (None for runs without a
      validation split).
    is_anomalous: score >= threshold.
    threshold: the raw image threshold.
    pixel_threshold: the map value from which a pixel belongs to the predicted mask.
    name: the file the image came from (None for arrays).
  """
  image: np.ndarray
  anomaly_map: np.ndarray
  score: float
  normalized_score: float | None
  is_anomalous: bool
  threshold: float
  pixel_threshold: float
  name: str | None = None

  @property
  def mask(self) -> np.ndarray:
    """bool (H, W): the predicted defect pixels, anomaly_map >= pixel_threshold."""
    return self.anomaly_map >= self.pixel_threshold

  def overlay(self, alpha: float = 0.6) -> np.ndarray:
    """uint8 (H, W, 3): the image tinted with the map's heatmap as in the panels' middle tile."""
    return visualize.overlay(self.image, np.clip(self.anomaly_map, 0.0, 1.0), alpha,
                             *visualize.tint_range(self.pixel_threshold))

  def title(self) -> str:
    """The line above predict.py's panels: file, score, decision, threshold."""
    name = f"{Path(self.name).name}  " if self.name else ""
    return (f"{name}score {self.score:.3f}  "
            f"{'ANOMALOUS' if self.is_anomalous else 'normal'} (threshold {self.threshold:.3f})")

  def panel(self, legend: bool = True) -> np.ndarray:
    """uint8 picture: image | overlay | predicted mask under `title()`, as predict.py writes."""
    return visualize.panel(self.image, np.clip(self.anomaly_map, 0.0, 1.0),
                           self.pixel_threshold, title=self.title(), legend=legend)

  def record(self) -> dict[str, Any]:
    """The row predict.py writes to scores.csv / scores.json."""
    return {"file": self.name, "score": self.score, "normalized_score": self.normalized_score,
            "threshold": self.threshold, "anomalous": self.is_anomalous}


def _is_single(images: Any) -> bool:
  if isinstance(images, (str, os.PathLike, bytes)):
    return True
  if isinstance(images, np.ndarray):
    # (H, W) gray or (H, W, C) with C in 1/3/4; (N, H, W) gray and (N, H, W, C) are batches.
    return images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4))
  return False


class Detector:
  """A trained DRAEM model with its decision thresholds.

  Build it with `from_workdir` or `from_onnx`. `infer` is the raw model on prepared inputs;
  `predict` is the whole path from user images to `Prediction`s.
  """

  def __init__(self, infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], *,
               preprocess: image_io.Preprocess, batch_size: int, fixed_batch: bool,
               threshold: float, pixel_threshold: float, normalize: Callable[[float], float | None],
               step: int | None, metadata: dict[str, Any], backend: str):
    """Use `from_workdir` or `from_onnx`.

    Args:
      infer: uint8 (B, H, W, 3) -> maps (B, H, W), scores (B,), B = batch_size when
        fixed_batch, else 1..batch_size; (H, W) = preprocess.size.
      preprocess: the geometry from an image to the model's input and back.
      batch_size: the most images per `infer` call.
      fixed_batch: the model takes exactly `batch_size` images (shorter batches are padded).
      threshold, pixel_threshold: the raw image threshold and the mask threshold.
      normalize: raw score -> normalised score (None without validation statistics).
      step: the checkpoint step.
      metadata: model.json (ONNX) or a summary of the run (workdir).
      backend: "onnx" or "jax".
    """
    self._infer = infer
    self.preprocess = preprocess
    self.image_size = preprocess.size  # (height, width) of the model's input.
    self.batch_size = int(batch_size)
    self.fixed_batch = bool(fixed_batch)
    self.threshold = float(threshold)
    self.pixel_threshold = float(pixel_threshold)
    self._normalize = normalize
    self.step = step
    self.metadata = metadata
    self.backend = backend

  @classmethod
  def from_onnx(cls, path: str | os.PathLike, threshold: float | None = None,
                batch_size: int = DEFAULT_BATCH, session_options: Any = None) -> Detector:
    """The ONNX model written by export.py (and model.json beside it), run by ONNX Runtime.

    Args:
      path: the .onnx file (plain or 8-bit).
      threshold: a raw image threshold instead of model.json's.
      batch_size: images per call when the model's batch is dynamic (a fixed batch wins).
      session_options: an `onnxruntime.SessionOptions` (threads, spinning), else its defaults.
    """
    from draem_jax.deployment import runner  # pylint: disable=g-import-not-at-top
    model = runner.Model(path, threshold, session_options)
    fixed = model.meta.get("input", {}).get("shape", [None])[0]

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      return model(batch.astype(np.float32) / 255.0)

    return cls(infer, preprocess=model.preprocess, batch_size=int(fixed or batch_size),
               fixed_batch=fixed is not None, threshold=model.threshold,
               pixel_threshold=model.pixel_threshold, normalize=model.normalized,
               step=model.meta.get("checkpoint_step"), metadata=model.meta, backend="onnx")

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, step: int | None = None,
                   threshold: float | None = None,
                   sensitivity: float | None = None) -> Detector:
    """A checkpoint of a run written by train.py, run by JAX as predict.py runs it.

    Args:
      workdir: the run's folder.
      step: checkpoint step (default: newest).
      threshold: a raw image threshold instead of the run's.
      sensitivity: in (0, 1), moves the validation split's threshold (predict.py's flag).
    """
    # pylint: disable=g-import-not-at-top
    from draem_jax import inference
    from draem_jax.data import padding
    from draem_jax.evaluation import evaluator
    from draem_jax.evaluation import validation
    from draem_jax.training import parallel
    # pylint: enable=g-import-not-at-top
    workdir = Path(workdir).expanduser()
    run = inference.load_run(workdir, step)
    image_threshold, pixel_threshold, chosen = inference.decision_thresholds(
        workdir, run, threshold, sensitivity)
    # eval.batch_size rounded up to fill every device, as predict.py's batches (`padding`).
    batch_size = padding.padded_batch_size(int(run.config.eval.batch_size),
                                           run.mesh.devices.size)
    predict = evaluator.jit_predict_fn(
        evaluator.predict_fn_for(run.model, run.config.eval), run.mesh)

    def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      maps, scores = predict(run.variables,
                             parallel.global_batch({"image": batch}, run.mesh)["image"])
      return np.asarray(maps), np.asarray(scores)

    def normalize(score: float) -> float | None:
      if chosen is None:
        return None
      return float(validation.normalize(chosen, np.float64(score)))

    metadata = {"workdir": str(workdir.absolute()), "checkpoint_step": run.step,
                "category": str(run.config.data.category),
                "image_size": run.config.data.image_size,
                "image_score": evaluator.score_kind(run.config.eval),
                "image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
                "threshold_source": inference.threshold_source(chosen, threshold, sensitivity)}
    if chosen is not None and threshold is None and sensitivity is None:
      # The validation split's figures describe this very threshold (synthetic anomalies).
      metadata["validation"] = chosen.get("validation")
    return cls(infer, preprocess=image_io.Preprocess.from_config(run.config.data),
               batch_size=batch_size, fixed_batch=True, threshold=image_threshold,
               pixel_threshold=pixel_threshold, normalize=normalize, step=run.step,
               metadata=metadata, backend="jax")

  # -- The steps of `predict`, public so that a server can batch requests between them. -----

  def prepare(self, image: ImageLike, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB (h, w, 3) at its own size, uint8 model input (H, W, 3)).

    Raises:
      DataError: unreadable file or unusable array; the message names it.
    """
    if isinstance(image, (str, os.PathLike)):
      rgb = image_io.load_image(image)
    else:
      rgb = image_io.as_rgb(image, name)
    return rgb, image_io.model_input(rgb, self.preprocess)

  def infer(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model on prepared inputs, in calls of at most `batch_size` (padded if fixed).

    Args:
      inputs: uint8 (N, H, W, 3), `prepare`'s second output stacked.

    Returns:
      maps float32 (N, H, W) and scores float32 (N,).
    """
    n = len(inputs)
    maps, scores = [], []
    for start in range(0, n, self.batch_size):
      chunk = inputs[start:start + self.batch_size]
      count = len(chunk)
      if self.fixed_batch and count < self.batch_size:
        padded = np.zeros((self.batch_size,) + chunk.shape[1:], np.uint8)
        padded[:count] = chunk
        chunk = padded
      m, s = self._infer(np.ascontiguousarray(chunk, np.uint8))
      maps.append(np.asarray(m)[:count])
      scores.append(np.asarray(s)[:count])
    if not maps:
      return np.zeros((0,) + self.image_size, np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps), np.concatenate(scores)

  def normalized(self, score: float) -> float | None:
    """The raw score with the threshold at 0.5, in [0, 1] (None without validation statistics)."""
    return self._normalize(float(score))

  def result(self, image: np.ndarray, anomaly_map: np.ndarray, score: float,
             name: str | None = None) -> Prediction:
    """The `Prediction` of one image from its model map (H, W) and score."""
    full_map = self.preprocess.map_back(np.asarray(anomaly_map, np.float32), image.shape[:2])
    score = float(score)
    return Prediction(image=image, anomaly_map=full_map, score=score,
                      normalized_score=self.normalized(score),
                      is_anomalous=bool(score >= self.threshold), threshold=self.threshold,
                      pixel_threshold=self.pixel_threshold, name=name)

  def predict(self, images: ImageLike | Sequence[ImageLike]
              ) -> Prediction | list[Prediction]:
    """Scores one image or several.

    Args:
      images: one image (a path, encoded bytes, or an array (H, W), (H, W, 1), (H, W, 3),
        (H, W, 4); uint8, 16-bit or float in [0, 1]), or a list of them, or a batch array
        (N, H, W) / (N, H, W, C). Any size; grayscale is repeated to RGB.

    Returns:
      A `Prediction` for one image, a list of them for several.

    Raises:
      DataError: an image cannot be read or has an unusable shape (before any compute).
    """
    single = _is_single(images)
    items = [images] if single else list(images)
    names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
    prepared = [self.prepare(x, f"image {i}" if not single else None)
                for i, x in enumerate(items)]
    if not prepared:
      raise DataError("predict() was given no image.")
    maps, scores = self.infer(np.stack([p[1] for p in prepared]))
    results = [self.result(rgb, m, s, name)
               for (rgb, _), m, s, name in zip(prepared, maps, scores, names)]
    return results[0] if single else results
