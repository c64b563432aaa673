"""Thresholds without labelled defects: the synthetic validation split and what it decides.

With data.validation_fraction > 0, a deterministic part of train/good is held out of training
(`data.pipeline.holdout_indices`, excluded at the reader level). After training, `calibrate`:

1. builds the synthetic validation split once: every held-out image clean (label 0) and the
   same image through the training simulator with anomaly_prob = 1 (label 1 where the mask is
   not empty), keyed by the fixed `jax.random.key(SIMULATION_SEED)` and with textures drawn by
   `np.random.default_rng(SIMULATION_SEED)`; the same for every run, seed and resume;
2. scores it with the evaluator's predict function (`evaluator.make_predict_fn`);
3. chooses the image and pixel thresholds (eval.threshold_method: "f1" = F1-max on the
   synthetic split, "fpr" = at most eval.target_fpr of the clean images / their pixels called
   anomalous), moves them by eval.sensitivity, and records the min-max statistics that map
   the threshold to a normalised score of 0.5;
4. writes `<workdir>/eval/<step>/thresholds.json` (process 0), read by evaluation (test-set
   metrics at these thresholds), predict.py and model export.

thresholds.json (format 2; raw scores are the model's, normalised = `metrics.normalize_scores`):
  image_threshold, pixel_threshold    the decision thresholds (sensitivity applied)
  base_image_threshold, base_pixel_threshold   as chosen, before the sensitivity
  image_min, image_max, pixel_min, pixel_max   raw ranges on the validation split
  method, target_fpr, sensitivity, step, format
  validation: {num_images, num_synthetic_anomalous, simulation_seed, files, note,
               synthetic_image_auroc, synthetic_image_ap, synthetic_image_f1_max,
               synthetic_pixel_ap, synthetic_image (metrics at image_threshold)}
The validation figures are measured on synthetic anomalies, not real defects (`SYNTHETIC_NOTE`):
they tell how well the thresholds separate the simulator's anomalies and do not estimate the
recall on real defects. Format 1 had the same figures without the `synthetic_` prefix.
"""

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from draem_jax.evaluation import evaluator
from draem_jax import fileio
from draem_jax.evaluation import metrics as metrics_lib
from draem_jax.evaluation import report
from draem_jax.simulation import simulator
from draem_jax.data import padding
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError

THRESHOLDS_FILE = "thresholds.json"
FORMAT = 2
# What the validation figures are, in thresholds.json and the report alike.
SYNTHETIC_NOTE = report.SYNTHETIC_NOTE
# Fixed on purpose (not train.seed): runs with different seeds calibrate on the same
# synthetic anomalies, and a resumed or re-evaluated run finds exactly the same split.
SIMULATION_SEED = 2021
THRESHOLD_METHODS = ("f1", "fpr")


def synthetic_split(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The validation images, clean and with simulated anomalies (module docstring, step 1).

  Returns:
    {'images': float32 (2N, H, W, 3) in [0, 1] (N clean, then N simulated), 'masks': float32
    (2N, H, W) in {0, 1}, 'labels': int32 (2N,), 'files': the N held-out file names}.
  """
  clean, files, texture_paths = pipeline.validation_sources(config)
  n = clean.shape[0]
  draws = np.random.default_rng(SIMULATION_SEED).integers(len(texture_paths), size=n)
  # The anomalies are simulated on the whole resized image, which is what evaluation scores
  # (also when training used crops).
  textures = pipeline.load_textures([texture_paths[i] for i in draws],
                                    pipeline.texture_preprocess(config, pipeline.image_hw(config)))
  # Every held-out image gets an anomaly (the training default gives half of them none): the
  # clean copies are the normal half of the split.
  sim_config = dataclasses.replace(simulator.SimulatorConfig.from_config(config.simulator),
                                   anomaly_prob=1.0)
  simulate = jax.jit(lambda key, x, t: simulator.simulate(key, x, t, sim_config))
  out = jax.device_get(simulate(jax.random.key(SIMULATION_SEED), clean, textures))
  masks = np.asarray(out.mask[..., 0], np.float32)
  images = np.concatenate([clean.astype(np.float32) / 255.0,
                           np.asarray(out.augmented, np.float32)])
  labels = np.concatenate([np.zeros(n, np.int32), (masks.reshape(n, -1).max(1) > 0)
                           .astype(np.int32)])
  masks = np.concatenate([np.zeros_like(masks), masks])
  return {"images": images, "masks": masks, "labels": labels, "files": files}


class _ArrayBatches:
  """Host arrays as the evaluator's batches: this process's rows of each global batch, the
  last one padded (`padding.batch_indices`)."""

  def __init__(self, images: np.ndarray, masks: np.ndarray, global_batch_size: int,
               process_index: int, process_count: int):
    self.images, self.masks = images, masks
    self._rows = padding.batch_indices(images.shape[0], global_batch_size, process_index,
                                       process_count)

  def __len__(self) -> int:
    return len(self._rows)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for index in self._rows:
      yield {"image": padding.take_rows(self.images, index).astype(np.float32),
             "mask": padding.take_rows(self.masks, index).astype(np.float32),
             "index": index.astype(np.int32)}


def describe_split(config: ml_collections.ConfigDict) -> str:
  """One log phrase: how many training images the validation split holds out."""
  if not pipeline.has_validation_split(config):
    return "no validation split"
  held_out = len(pipeline.open_split(config, "validation"))
  return f"{held_out} more held out for the validation split"


# The min-max statistics of a thresholds.json that normalise scores (`normalize`).
NORMALIZATION_KEYS = ("image_min", "image_max", "pixel_min", "pixel_max")


def decision_threshold(base: float, low: float, high: float, sensitivity: float) -> float:
  """The base threshold moved by the sensitivity: base + (0.5 - sensitivity) * (high - low).

  0.5 keeps it; towards 1 lowers it (more images called anomalous, fewer defects missed);
  towards 0 raises it. In normalised units a sensitivity s moves the boundary by s - 0.5.
  """
  return float(base + (0.5 - sensitivity) * (high - low))


def choose_thresholds(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray,
                      maps: np.ndarray, *, method: str = "f1", target_fpr: float = 0.01,
                      sensitivity: float = 0.5) -> dict[str, Any]:
  """Thresholds and normalisation statistics from a scored validation split.

  Args:
    labels: (N,) 0/1, 1 = the image carries an anomaly.
    scores: (N,) raw image scores.
    masks: (N, H, W) 0/1 ground-truth masks (zeros for normal images).
    maps: (N, H, W) raw anomaly maps.
    method: "f1" (F1-max on this split) or "fpr" (at most target_fpr of the normal images, and
      of their pixels, called anomalous).
    target_fpr: the allowed false-positive rate of method "fpr".
    sensitivity: in (0, 1), see `decision_threshold`.

  Returns:
    The thresholds.json fields of the module docstring except step, format and validation.
  """
  if method not in THRESHOLD_METHODS:
    raise ConfigError(f"eval.threshold_method={method!r} must be one of {THRESHOLD_METHODS}.")
  labels = np.asarray(labels).astype(bool)
  masks = np.asarray(masks) > 0.5
  if method == "f1":
    image_base = metrics_lib.f1_max(labels, scores)[1]
    pixel_base = metrics_lib.f1_max(masks, maps)[1]
    if not (np.isfinite(image_base) and np.isfinite(pixel_base)):
      raise ConfigError("the synthetic validation split has no anomalous image, so F1-max has "
                        "no threshold; use eval.threshold_method='fpr'.")
  else:
    image_base = metrics_lib.fpr_threshold(np.asarray(scores)[~labels], target_fpr)
    pixel_base = metrics_lib.fpr_threshold(np.asarray(maps)[~labels], target_fpr)
  out = {"method": method, "target_fpr": float(target_fpr), "sensitivity": float(sensitivity),
         "base_image_threshold": float(image_base), "base_pixel_threshold": float(pixel_base),
         "image_min": float(np.min(scores)), "image_max": float(np.max(scores)),
         "pixel_min": float(np.min(maps)), "pixel_max": float(np.max(maps))}
  return with_sensitivity(out, sensitivity)


def with_sensitivity(thresholds: dict[str, Any], sensitivity: float) -> dict[str, Any]:
  """A copy of `thresholds` with the decision thresholds for another sensitivity."""
  if not 0.0 < sensitivity < 1.0:
    raise ConfigError(f"sensitivity={sensitivity!r} must be in (0, 1) (0.5 = the threshold as "
                      "chosen; higher flags more images).")
  out = dict(thresholds, sensitivity=float(sensitivity))
  for kind in ("image", "pixel"):
    out[f"{kind}_threshold"] = decision_threshold(
        out[f"base_{kind}_threshold"], out[f"{kind}_min"], out[f"{kind}_max"], sensitivity)
  return out


def normalize(thresholds: dict[str, Any], values: np.ndarray, kind: str = "image") -> np.ndarray:
  """Raw image scores (kind "image") or maps ("pixel") normalised: the threshold maps to 0.5."""
  return metrics_lib.normalize_scores(values, thresholds[f"{kind}_threshold"],
                                      thresholds[f"{kind}_min"], thresholds[f"{kind}_max"])


def calibrate(config: ml_collections.ConfigDict, variables: Any, model: nn.Module, mesh: Mesh,
              out_dir: str | os.PathLike | None, *, step: int) -> dict[str, Any]:
  """Scores the synthetic validation split and chooses the thresholds (module docstring).

  Every process computes the same result; process 0 writes `<out_dir>/thresholds.json`.

  Args:
    config: the run's config (data, simulator, eval groups).
    variables: the model variables, replicated on `mesh`.
    model: the DRAEM module.
    mesh: device mesh.
    out_dir: the checkpoint's eval folder (None: write nothing).
    step: the checkpoint's step.

  Returns:
    The thresholds.json content.
  """
  ev = config.eval
  split = synthetic_split(config)
  batches = _ArrayBatches(split["images"], split["masks"],
                          padding.padded_batch_size(ev.batch_size, mesh.devices.size),
                          jax.process_index(), jax.process_count())
  predict = evaluator.jit_predict_fn(evaluator.predict_fn_for(model, ev), mesh)
  pred = evaluator.predict_split(predict, variables, batches, mesh, desc="validation")
  labels, scores, maps = split["labels"], pred["scores"], pred["maps"]
  result = choose_thresholds(labels, scores, split["masks"], maps,
                             method=ev.get("threshold_method", "f1"),
                             target_fpr=ev.get("target_fpr", 0.01),
                             sensitivity=ev.get("sensitivity", 0.5))
  result.update(format=FORMAT, step=int(step))
  result["validation"] = {
      "num_images": len(split["files"]), "num_synthetic_anomalous": int(labels.sum()),
      "simulation_seed": SIMULATION_SEED, "files": split["files"], "note": SYNTHETIC_NOTE,
      "synthetic_image_auroc": metrics_lib.image_auroc(labels, scores),
      "synthetic_image_ap": metrics_lib.image_ap(labels, scores),
      "synthetic_image_f1_max": metrics_lib.f1_max(labels, scores)[0],
      "synthetic_pixel_ap": metrics_lib.pixel_ap(split["masks"] > 0.5, maps),
      "synthetic_image": metrics_lib.binary_metrics(labels, scores, result["image_threshold"]),
  }
  if out_dir is not None and jax.process_index() == 0:
    fileio.atomic_write_json(Path(out_dir) / THRESHOLDS_FILE, metrics_lib.json_safe(result),
                             sort_keys=True)
  logging.info("Validation split (%d images, %d synthetic anomalies): image threshold %.4f, "
               "pixel threshold %.4f (%s); image AUROC on the synthetic anomalies %.3f (not an "
               "estimate for real defects).",
               result["validation"]["num_images"], int(labels.sum()),
               result["image_threshold"], result["pixel_threshold"], result["method"],
               result["validation"]["synthetic_image_auroc"])
  return result


def load_thresholds(eval_dir: str | os.PathLike) -> dict[str, Any] | None:
  """thresholds.json of one checkpoint's eval folder, or None if it was not written."""
  path = Path(eval_dir) / THRESHOLDS_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e}); delete it to choose the thresholds "
                      "again (predict.py and evaluate.py do so).") from e


def thresholds_for(config: ml_collections.ConfigDict, variables: Any, model: nn.Module,
                   mesh: Mesh, eval_dir: str | os.PathLike, *, step: int
                   ) -> dict[str, Any] | None:
  """The checkpoint's thresholds: thresholds.json if written, else calibrated now if the run
  holds out a validation split (and written), else None (no validation split)."""
  found = load_thresholds(eval_dir)
  if found is not None or not pipeline.has_validation_split(config):
    return found
  return calibrate(config, variables, model, mesh, eval_dir, step=step)
