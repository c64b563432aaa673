"""Inference and evaluation: anomaly maps, image scores, metrics, overlays (DRAEM_SPEC 5).

On the device (`make_predict_fn`): R -> D -> softmax on the whole image (the networks are
fully convolutional, so a model trained on crops scores any size), or tile by tile with
eval.tile_size, the overlapping tiles blended into one map (`data.windows.tiled_map`); the
pixel score is the probability of the anomalous class (`models.anomaly_map`: 1 - SSIM for the
reconstructive network alone), the image score the maximum of the k x k mean-filtered map
(zero padding counted in the average, as the reference's `avg_pool2d(count_include_pad=True)`),
or one of the alternatives of `image_score` (eval.image_score). On the host (`evaluate`): the
metrics of `draem_jax.evaluation.metrics` over the whole test split, written to
`<out>/metrics.json`, a Markdown comparison with the paper, per-image scores, overlays and
the HTML report of `draem_jax.evaluation.report`.
"""

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from draem_jax import config_lib
from draem_jax import data as data_lib
from draem_jax import fileio
from draem_jax.evaluation import metrics as metrics_lib
from draem_jax import models
from draem_jax.training import parallel
from draem_jax.evaluation import report
from draem_jax.evaluation import visualize
from draem_jax.data import images as images_lib
from draem_jax.data import windows

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
COMPARISON_FILE = "comparison.md"
OVERLAY_DIR = "overlays"
MIN_OVERLAY_SIDE = 256  # Overlay tiles are enlarged to at least this many pixels.


# Image scores from a map (eval.image_score). "paper" is DRAEM's; the other two are documented
# alternatives that do not rise with the whole map under a global lighting change
# (bench/RESULTS.md, robustness section).
IMAGE_SCORES = config_lib.IMAGE_SCORES


def _check_score_kind(kind: str) -> None:
  if kind not in IMAGE_SCORES:
    raise ValueError(f"eval.image_score={kind!r} must be one of {IMAGE_SCORES}.")


def mean_filtered(maps: jax.Array, size: int) -> jax.Array:
  """The `size` x `size` mean filter, stride 1, zero padding size // 2 counted in the average.

  Args:
    maps: (B, H, W) anomaly maps.
    size: odd filter size (21 in the paper).

  Returns:
    (B, H, W). A map of ones reads (size // 2 + 1)^2 / size^2 in its corners.
  """
  pad = size // 2
  sums = jax.lax.reduce_window(maps, 0.0, jax.lax.add, (1, size, size), (1, 1, 1),
                               ((0, 0), (pad, pad), (pad, pad)))
  return sums / (size * size)


def mean_filter_max(maps: jax.Array, size: int) -> jax.Array:
  """Image scores as in the paper: (B, H, W) maps -> (B,) max of `mean_filtered(maps, size)`."""
  return jnp.max(mean_filtered(maps, size), axis=(1, 2))


def image_score(maps: jax.Array, size: int, kind: str = "paper") -> jax.Array:
  """(B, H, W) maps -> (B,) image scores of the given kind (one of IMAGE_SCORES).

  paper:        max of the mean-filtered map (DRAEM_SPEC section 5);
  minus_median: that max minus the median of the mean-filtered map, so that a rise of the whole
                map (a global brightness change) does not raise the score;
  p99:          the 99th percentile of the (unfiltered) map, linear interpolation.
  """
  _check_score_kind(kind)
  if kind == "paper":
    return mean_filter_max(maps, size)
  if kind == "minus_median":
    filtered = mean_filtered(maps, size)
    flat = filtered.reshape(filtered.shape[0], -1)
    return jnp.max(flat, axis=1) - jnp.median(flat, axis=1)
  return jnp.percentile(maps.reshape(maps.shape[0], -1), 99.0, axis=1)  # p99


def filter_size_for(map_hw: tuple[int, int], mean_filter_size: int,
                    mean_filter_fraction: float = 0.0) -> int:
  """The mean filter's k for maps of `map_hw`: `mean_filter_size`, or with a fraction > 0 the
  odd integer nearest fraction x the short side (21/256 gives 21 at 256, 5 at 64, 41 at 512)."""
  if not mean_filter_fraction:
    return int(mean_filter_size)
  k = int(np.floor((mean_filter_fraction * min(map_hw) - 1.0) / 2.0 + 0.5)) * 2 + 1
  return max(1, k)


def make_predict_fn(model: nn.Module, mean_filter_size: int,
                    score_kind: str = "paper", *, mean_filter_fraction: float = 0.0,
                    tile_size: int | tuple[int, int] = 0, tile_overlap: float = 0.25,
                    unroll_tiles: bool = False) -> Callable:
  """`predict(variables, images) -> (maps, scores)` (not jitted).

  Args:
    model: the DRAEM module.
    mean_filter_size: odd k of the k x k mean filter of the image score.
    score_kind: one of IMAGE_SCORES (`image_score`).
    mean_filter_fraction: if > 0, k follows the image size instead (`filter_size_for`).
    tile_size: 0 scores the whole image at once; a side or (height, width) scores tiles of it,
      overlapping by `tile_overlap`, averaged into one map (`windows.tiled_map`).
    tile_overlap: fraction of a tile shared with its neighbour.
    unroll_tiles: a static loop over the tiles (for ONNX export).

  Args of the returned function:
    variables: {'params', 'batch_stats'}; BatchNorm uses the running statistics.
    images: (B, H, W, 3) uint8 0..255 (or float in [0, 1]).

  Returns of the returned function:
    maps (B, H, W) float32, the probability of "anomalous" per pixel (`models.anomaly_map`:
    1 - SSIM for model.variant='recon_ae'); scores (B,) float32.
  """
  _check_score_kind(score_kind)  # Now, not when the function is first traced.
  tile_hw = images_lib.size_hw(tile_size, "eval.tile_size") if tile_size else None

  def predict(variables, images):
    if images.dtype == jnp.uint8:
      x = images.astype(jnp.float32) / 255.0
    else:
      x = images.astype(jnp.float32)

    def anomaly_map(x):
      rec, logits = model.apply(variables, x, train=False)
      return models.anomaly_map(x, rec, logits)

    if tile_hw is None:
      maps = anomaly_map(x)
    else:
      maps = windows.tiled_map(anomaly_map, x, tile_hw, tile_overlap, unroll=unroll_tiles)
    k = filter_size_for(maps.shape[1:3], mean_filter_size, mean_filter_fraction)
    return maps, image_score(maps, k, score_kind)

  return predict


def score_kind(ev: ml_collections.ConfigDict) -> str:
  """eval.image_score, "paper" for runs whose config.json predates the field."""
  return ev.get("image_score", "paper")


def predict_fn_for(model: nn.Module, ev: ml_collections.ConfigDict,
                   unroll_tiles: bool = False) -> Callable:
  """`make_predict_fn` with the filter, image score and tiles of the eval config `ev` (fields
  missing in runs that predate them read as their defaults: no tiles, a fixed filter)."""
  return make_predict_fn(model, ev.mean_filter_size, score_kind(ev),
                         mean_filter_fraction=float(ev.get("mean_filter_fraction", 0.0)),
                         tile_size=ev.get("tile_size", 0),
                         tile_overlap=float(ev.get("tile_overlap", 0.25)),
                         unroll_tiles=unroll_tiles)


def jit_predict_fn(predict: Callable, mesh: Mesh) -> Callable:
  """jit with the variables replicated and the images sharded on the batch axis.

  On CPU meshes it compiles with `models.xla_compiler_options`, as the train step does.
  """
  return jax.jit(predict, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=parallel.batch_sharded(mesh),
                 compiler_options=models.xla_compiler_options(mesh))


def _to_host(x: jax.Array) -> np.ndarray:
  """A global array as numpy on every process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def predict_split(predict: Callable, variables, eval_ds: data_lib.EvalDataset,
                  mesh: Mesh, desc: str = "evaluating") -> dict[str, np.ndarray]:
  """Runs `predict` over the test split; returns host arrays in test-split order.

  Returns:
    {'maps': (N, S, S) float32, 'scores': (N,), 'masks': (N, S, S) float32 resized ground
    truth (not thresholded), 'images': (N, S, S, 3) uint8}.
  """
  out = {"maps": [], "scores": [], "masks": [], "images": [], "index": []}
  show = jax.process_index() == 0
  for batch in tqdm(eval_ds, total=len(eval_ds), desc=desc, disable=not show, leave=False):
    arrays = parallel.global_batch(
        {"image": batch["image"], "mask": batch["mask"], "index": batch["index"]}, mesh)
    maps, scores = predict(variables, arrays["image"])
    index = _to_host(arrays["index"])
    keep = index >= 0
    out["index"].append(index[keep])
    out["maps"].append(_to_host(maps)[keep])
    out["scores"].append(_to_host(scores)[keep])
    out["masks"].append(_to_host(arrays["mask"])[keep])
    out["images"].append(_to_host(arrays["image"])[keep])
  result = {k: np.concatenate(v) for k, v in out.items()}
  order = np.argsort(result.pop("index"), kind="stable")
  return {k: v[order] for k, v in result.items()}


def at_original_size(eval_ds, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """The original masks and the maps taken back (bilinear) to their size, as MVTec's script
  (`Preprocess.map_back`: the padding of fit_long_side dropped).

  Returns:
    ((N, h, w) bool masks, (N, h, w) float32 maps), or None when the test images have several
    sizes (pooled pixel metrics need one).
  """
  originals = [eval_ds.original(i)["mask"] for i in range(eval_ds.num_examples)]
  shapes = {m.shape for m in originals}
  if len(shapes) != 1:
    logging.warning("Test images have several sizes %s: metrics at full resolution skipped.",
                    sorted(shapes))
    return None
  (h, w), = shapes
  up = np.stack([eval_ds.preprocess.map_back(m.astype(np.float32), (h, w)) for m in maps])
  return np.stack(originals).astype(bool), up


def _full_resolution_aupro(eval_ds, maps: np.ndarray, fpr_limit: float) -> float | None:
  """AU-PRO against the original masks (`at_original_size`); None for mixed image sizes."""
  full = at_original_size(eval_ds, maps)
  return None if full is None else metrics_lib.aupro(*full, fpr_limit)


def _scores_csv(eval_ds, scores: np.ndarray, threshold: float,
                normalized: np.ndarray | None = None) -> str:
  """Raw score, normalised score (empty without a validation split) and decision per image."""
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["file_name", "defect_type", "label", "score", "normalized_score",
                   "predicted_anomalous"])
  for i, score in enumerate(scores):
    writer.writerow([eval_ds.file_names[i], eval_ds.defect_types[i], int(eval_ds.labels[i]),
                     f"{float(score):.6f}",
                     "" if normalized is None else f"{float(normalized[i]):.6f}",
                     int(bool(score >= threshold))])
  return buf.getvalue()


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, gt: np.ndarray | None,
                      maps: np.ndarray, thresholds: dict[str, Any]) -> dict[str, Any]:
  """Test-split metrics at thresholds chosen elsewhere (the validation split: no test tuning).

  Returns:
    {"image_threshold", "image_precision", "image_recall", "image_f1", "image_fpr",
     "image_accuracy", and with masks the same for "pixel_"}.
  """
  out = {}
  kinds = [("image", labels, scores)] + ([] if gt is None else [("pixel", gt, maps)])
  for kind, truth, values in kinds:
    for name, value in metrics_lib.binary_metrics(truth, values,
                                                  thresholds[f"{kind}_threshold"]).items():
      out[f"{kind}_{name}"] = value
  return out


def _enlarge(x: np.ndarray, factor: int) -> np.ndarray:
  """(H, W, ...) -> (factor H, factor W, ...) by pixel repetition (maps stay unblurred)."""
  return x if factor == 1 else np.repeat(np.repeat(x, factor, axis=0), factor, axis=1)


def _write_overlays(out_dir: Path, eval_ds, pred: dict, gt: np.ndarray | None,
                    pixel_threshold: float, image_threshold: float) -> int:
  written = 0
  # Small training resolutions (64x64 on CPU) are enlarged so the tiles and title are legible.
  factor = max(1, MIN_OVERLAY_SIDE // pred["maps"].shape[1])
  for i in tqdm(range(eval_ds.num_examples), desc="overlays", leave=False):
    defect, name = str(eval_ds.defect_types[i]), str(eval_ds.file_names[i])
    score = float(pred["scores"][i])
    verdict = "anomalous" if score >= image_threshold else "normal"
    picture = visualize.panel(
        _enlarge(pred["images"][i], factor), _enlarge(pred["maps"][i], factor),
        pixel_threshold, None if gt is None else _enlarge(gt[i], factor),
        title=f"{defect}/{Path(name).name}  score {score:.3f}  {verdict} (threshold "
              f"{image_threshold:.3f})")
    visualize.save_png(out_dir / OVERLAY_DIR / defect / f"{Path(name).stem}.png", picture)
    written += 1
  return written


def evaluate(config: ml_collections.ConfigDict, variables: Any, model: nn.Module, mesh: Mesh,
             out_dir: str | os.PathLike | None, *, step: int,
             write_overlays: bool | None = None,
             thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
  """Evaluates one category's test split; writes results under `out_dir` (process 0).

  Args:
    config: the run's config (data, eval groups are used).
    variables: the model variables ({'params', 'batch_stats'}), replicated on `mesh`.
    model: the DRAEM module.
    mesh: device mesh.
    out_dir: where metrics.json, comparison.md, scores.csv, overlays/ and report.html go
      (None: nowhere).
    step: the checkpoint's step (recorded in metrics.json).
    write_overlays: default config.eval.write_overlays.
    thresholds: the validation split's thresholds (`validation.calibrate`); then the metrics
      at them are added as "validation_threshold" and decide scores.csv and the overlays.
      Without, the test-set F1-max thresholds (optimistic: tuned on the test set) do.

  Returns:
    The metrics dict (fractions; nan where undefined, e.g. pixel metrics without masks).
  """
  ev = config.eval
  eval_ds = data_lib.make_eval_dataset(config, process_index=jax.process_index(),
                                       process_count=jax.process_count(),
                                       num_devices=mesh.devices.size)
  predict = jit_predict_fn(predict_fn_for(model, ev), mesh)
  pred = predict_split(predict, variables, eval_ds, mesh)
  if eval_ds.has_masks:
    gt = metrics_lib.gt_masks(pred["masks"], ev.protocol)
    result = metrics_lib.evaluate_category(eval_ds.labels, pred["scores"], gt, pred["maps"],
                                           eval_ds.defect_types, ev.aupro_fpr_limit)
  else:  # Image-level ground truth only.
    gt = None
    result = {"image_auroc": metrics_lib.image_auroc(eval_ds.labels, pred["scores"]),
              "image_ap": metrics_lib.image_ap(eval_ds.labels, pred["scores"])}
    result["f1_max"], result["f1_threshold"] = metrics_lib.f1_max(eval_ds.labels,
                                                                  pred["scores"])
  if eval_ds.has_masks and ev.get("aupro_full_resolution", False):
    result["aupro_full_resolution"] = _full_resolution_aupro(eval_ds, pred["maps"],
                                                             ev.aupro_fpr_limit)
  result.update(category=str(config.data.category), step=int(step), protocol=ev.protocol,
                has_masks=bool(eval_ds.has_masks), num_test_images=int(eval_ds.num_examples))
  normalized = None
  if thresholds is not None:
    result["validation_threshold"] = threshold_metrics(eval_ds.labels, pred["scores"], gt,
                                                       pred["maps"], thresholds)
    normalized = metrics_lib.normalize_scores(pred["scores"], thresholds["image_threshold"],
                                              thresholds["image_min"], thresholds["image_max"])
    if config.data.source == "dagm":  # The paper's Table 4, at the validation threshold.
      result["dagm"] = {"image_auroc": result["image_auroc"],
                        **metrics_lib.classification_metrics(eval_ds.labels, pred["scores"],
                                                             thresholds["image_threshold"]),
                        "threshold_source": "held-out defect-free Train images "
                                            f"(eval.threshold_method={thresholds.get('method')})"}
  if out_dir is None or jax.process_index() != 0:
    return result
  out_dir = Path(out_dir)
  if thresholds is not None:
    image_threshold = thresholds["image_threshold"]
  else:
    image_threshold = result.get("f1_threshold", float("nan"))
  fileio.atomic_write_json(out_dir / METRICS_FILE, metrics_lib.json_safe(result),
                           sort_keys=True)
  fileio.atomic_write_text(out_dir / SCORES_FILE, _scores_csv(eval_ds, pred["scores"],
                                                              image_threshold, normalized))
  table = metrics_lib.comparison_table(str(config.data.category), result)
  if "dagm" in result:
    table = metrics_lib.dagm_table(str(config.data.category), result)
  fileio.atomic_write_text(out_dir / COMPARISON_FILE, f"# {config.data.category}, step {step}, "
                           f"protocol {ev.protocol}\n\n{table}\n")
  if ev.write_overlays if write_overlays is None else write_overlays:
    pixel_threshold = (thresholds["pixel_threshold"] if thresholds is not None
                       else result.get("pixel_f1_threshold", float("nan")))
    if not np.isfinite(pixel_threshold):
      pixel_threshold = 0.5
    if not np.isfinite(image_threshold):
      image_threshold = 0.5
    _write_overlays(out_dir, eval_ds, pred, gt, pixel_threshold, image_threshold)
  report.write_report(out_dir, metrics_lib.json_safe(result), eval_ds.labels,
                      eval_ds.defect_types, eval_ds.file_names, pred["scores"], pred["maps"], gt,
                      config=config.to_dict(), fpr_limit=ev.aupro_fpr_limit,
                      threshold=thresholds["image_threshold"] if thresholds is not None else None,
                      thresholds=thresholds)
  logging.info("Evaluation of %s at step %d: %s", config.data.category, step,
               {k: result.get(k) for k in metrics_lib.METRIC_NAMES})
  return result
