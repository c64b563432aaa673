"""Evaluation metrics of DRAEM_SPEC section 5, as pure numpy functions on host arrays.

Image AUROC, pixel AUROC and pixel average precision (AP) over all pixels of a category
pooled, F1-max, and the MVTec AU-PRO; the ground-truth rules of the two protocols; the
21x21 mean-filter image score; and the published per-category numbers for comparison.

The AUROC and AP definitions are scikit-learn's `roc_auc_score` (trapezoids between the ROC
points at every distinct score) and `average_precision_score` (step-wise sum of
`(R_k - R_(k-1)) * P_k`, no interpolation); the tests check equality with scikit-learn. They
are computed here from ONE descending sort of the scores shared by every pixel metric of a
category (and, by filtering the sorted order, by every defect-type subset): on the ~11M
pixels of an MVTec test set scikit-learn sorts again for each metric and takes ~9 s
(AUROC) + ~7 s (AP) on a 2-core CPU, while one sort takes ~1.5 s.

Degenerate inputs: every metric whose definition needs both classes (normal and anomalous
images, pixels or regions) returns `nan` when one class is absent, instead of raising, so
that a per-defect-type table or a tiny test set still gets its other numbers; `counts` in the
`evaluate_category` result show why. `json_safe` turns those `nan` into `null` for JSON.
Non-finite scores (a diverged model) raise ValueError.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from draem_jax.errors import ConfigError

PROTOCOLS = ("paper", "standard")
# Connected components of the ground truth use 8-connectivity (MVTec AU-PRO definition).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# ------------------------------------------------------------------------------------------
# Ranking: one descending sort shared by all curve-based metrics.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ranking:
  """Scores sorted in descending order, with the indices into the flat score array.

  Filtering `order` by a boolean membership mask keeps it sorted, so a subset's ranking costs
  O(n) instead of a new O(n log n) sort (`subset`).

  Attributes:
    order: (M,) int64 indices into the flattened scores, highest score first.
    sorted_scores: (M,) the scores in that order.
  """
  order: np.ndarray
  sorted_scores: np.ndarray

  @classmethod
  def of(cls, scores: np.ndarray) -> "Ranking":
    """Sorts `scores` (any shape, flattened) in descending order."""
    flat = _finite_scores(scores)
    # Ascending argsort reversed: the order inside a tie group is irrelevant (groups move
    # together), so the faster non-stable sort is fine.
    order = np.argsort(flat)[::-1]
    return cls(order=order, sorted_scores=flat[order])

  def subset(self, keep: np.ndarray) -> "Ranking":
    """The ranking of the elements where the flat boolean `keep` is True (indices unchanged)."""
    inside = np.asarray(keep).reshape(-1)[self.order]
    return Ranking(order=self.order[inside], sorted_scores=self.sorted_scores[inside])

  def group_ends(self) -> np.ndarray:
    """(T,) positions of the last element of each run of equal scores (T distinct scores).

    A threshold t at a distinct score predicts `score >= t` as anomalous, i.e. everything up to
    and including the end of t's tie group: equal scores always move together.
    """
    s = self.sorted_scores
    if s.size == 0:
      return np.zeros((0,), np.int64)
    return np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)


def _finite_scores(scores: np.ndarray) -> np.ndarray:
  flat = np.asarray(scores).reshape(-1)
  if not np.issubdtype(flat.dtype, np.floating):
    flat = flat.astype(np.float64)
  if not np.all(np.isfinite(flat)):
    raise ValueError("scores/anomaly maps contain NaN or inf (did training diverge?); metrics "
                     "need finite values.")
  return flat


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}.")


def _binary_counts(labels_flat: np.ndarray, ranking: Ranking):
  """Cumulative true/false positives at every distinct threshold, highest threshold first.

  Returns:
    tp, fp: (T,) int64 counts of positives/negatives with score >= threshold;
    thresholds: (T,) the distinct scores, descending.
  """
  ends = ranking.group_ends()
  y = labels_flat[ranking.order]
  tp = np.cumsum(y, dtype=np.int64)[ends]
  fp = (ends + 1) - tp
  return tp, fp, ranking.sorted_scores[ends]


def _auroc_from_counts(tp: np.ndarray, fp: np.ndarray) -> float:
  """Trapezoidal area under the ROC through (0, 0) and every (FPR, TPR) point (sklearn's)."""
  if tp.size == 0:
    return math.nan
  pos, neg = int(tp[-1]), int(fp[-1])
  if pos == 0 or neg == 0:
    return math.nan
  tp0 = np.concatenate([[0], tp]).astype(np.float64)
  fp0 = np.concatenate([[0], fp]).astype(np.float64)
  # Integer counts: the sum of dFP * (TP_prev + TP) is exact in float64 up to ~4e15.
  return float(np.sum(np.diff(fp0) * (tp0[1:] + tp0[:-1])) / (2.0 * pos * neg))


def _ap_from_counts(tp: np.ndarray, fp: np.ndarray) -> float:
  """Average precision `sum_k (R_k - R_(k-1)) P_k` over distinct thresholds (sklearn's)."""
  if tp.size == 0 or tp[-1] == 0:
    return math.nan
  pos = float(tp[-1])
  precision = tp / (tp + fp).astype(np.float64)
  d_recall = np.diff(np.concatenate([[0], tp])) / pos
  return float(np.sum(d_recall * precision))


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, thresholds: np.ndarray):
  """Maximum F1 over thresholds and the highest threshold that attains it."""
  if tp.size == 0 or tp[-1] == 0:
    return math.nan, math.nan
  pos = tp[-1]
  # F1 = 2PR / (P + R) = 2 TP / (TP + FP + positives); the denominator is never 0 here.
  f1 = 2.0 * tp / (tp + fp + pos).astype(np.float64)
  best = int(np.argmax(f1))  # First maximum in descending-threshold order = highest threshold.
  return float(f1[best]), float(thresholds[best])


def _as_labels(labels: np.ndarray) -> np.ndarray:
  flat = np.asarray(labels).reshape(-1)
  if flat.dtype != bool:
    values = np.unique(flat)
    if not np.all(np.isin(values, (0, 1))):
      raise ValueError(f"labels must be 0/1 or bool, got values {values[:5]}.")
    flat = flat.astype(bool)
  return flat


# ------------------------------------------------------------------------------------------
# Image and pixel metrics.
# ------------------------------------------------------------------------------------------


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Image-level AUROC (sklearn `roc_auc_score` definition).

  Args:
    labels: (N,) 0/1 or bool, 1 = anomalous image.
    scores: (N,) image anomaly scores, higher = more anomalous.

  Returns:
    AUROC in [0, 1]; nan when only one class is present.
  """
  return _auroc(labels, scores, "image_auroc labels vs scores")


def image_ap(labels: np.ndarray, scores: np.ndarray) -> float:
  """Image-level average precision (sklearn `average_precision_score` definition).

  The authors' evaluation reports it next to image AUROC; unlike AUROC it depends on the
  share of anomalous images and rewards ranking the most anomalous ones first.

  Args:
    labels: (N,) 0/1 or bool, 1 = anomalous image.
    scores: (N,) image anomaly scores, higher = more anomalous.

  Returns:
    AP in [0, 1]; nan when no image is anomalous.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  _check_same_shape(labels, scores, "image_ap labels vs scores")
  return _ap_from_counts(*_binary_counts(_as_labels(labels), Ranking.of(scores))[:2])


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
  """Pixel-level AUROC over ALL pixels of all images pooled.

  Args:
    masks: (N, H, W) bool ground truth, True = anomalous pixel.
    maps: (N, H, W) float anomaly maps.

  Returns:
    AUROC in [0, 1]; nan when no pixel (or every pixel) is anomalous.
  """
  return _auroc(masks, maps, "pixel_auroc masks vs maps")


def _auroc(labels, scores, what: str) -> float:
  """AUROC of scores against same-shaped binary labels, every element pooled."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  _check_same_shape(labels, scores, what)
  tp, fp, _ = _binary_counts(_as_labels(labels), Ranking.of(scores))
  return _auroc_from_counts(tp, fp)


def pixel_ap(masks: np.ndarray, maps: np.ndarray) -> float:
  """Pixel-level average precision over ALL pixels pooled (sklearn `average_precision_score`).

  Args:
    masks: (N, H, W) bool ground truth, True = anomalous pixel.
    maps: (N, H, W) float anomaly maps.

  Returns:
    AP in [0, 1]; nan when no pixel is anomalous.
  """
  masks, maps = np.asarray(masks), np.asarray(maps)
  _check_same_shape(masks, maps, "pixel_ap masks vs maps")
  tp, fp, _ = _binary_counts(_as_labels(masks), Ranking.of(maps))
  return _ap_from_counts(tp, fp)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
  """Best F1 over all thresholds of the precision-recall curve.

  The curve is sklearn's `precision_recall_curve`: one point per distinct score t, predicting
  `score >= t` as anomalous. Works for images ((N,) labels/scores) or pixels (any matching
  shapes, flattened).

  Args:
    labels: 0/1 or bool, 1 = anomalous.
    scores: the same shape, higher = more anomalous.

  Returns:
    (f1, threshold): the maximum F1 and the score t at which `score >= t` is called anomalous
    (when several thresholds tie, the highest); (nan, nan) when no label is positive.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  _check_same_shape(labels, scores, "f1_max labels vs scores")
  return _f1_from_counts(*_binary_counts(_as_labels(labels), Ranking.of(scores)))


def roc_curve(labels: np.ndarray, scores: np.ndarray):
  """The ROC whose trapezoids `image_auroc` / `pixel_auroc` sum, for plotting.

  Args:
    labels: 0/1 or bool, 1 = anomalous (any shape, flattened).
    scores: the same shape.

  Returns:
    (fpr, tpr, thresholds), each (T + 1,): from (0, 0) (threshold +inf) through every distinct
    score in descending order to (1, 1) (sklearn's `roc_curve(drop_intermediate=False)`);
    None when one class is absent.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  _check_same_shape(labels, scores, "roc_curve labels vs scores")
  tp, fp, thresholds = _binary_counts(_as_labels(labels), Ranking.of(scores))
  if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
    return None
  fpr = np.concatenate([[0.0], fp / float(fp[-1])])
  tpr = np.concatenate([[0.0], tp / float(tp[-1])])
  return fpr, tpr, np.concatenate([[np.inf], thresholds])


def fpr_threshold(normal_scores: np.ndarray, target_fpr: float) -> float:
  """The lowest threshold at which at most `target_fpr` of normal samples are called anomalous.

  With n normal scores, at most floor(target_fpr * n) of them satisfy `score >= threshold`:
  the threshold is the smallest float above the (floor(target_fpr * n) + 1)-th highest score.

  Args:
    normal_scores: scores of normal (label 0) samples or pixels, any shape.
    target_fpr: allowed false-positive rate in [0, 1).

  Returns:
    The threshold (`score >= threshold` is anomalous).
  """
  if not 0.0 <= target_fpr < 1.0:
    raise ValueError(f"target_fpr={target_fpr} must be in [0, 1).")
  flat = np.sort(_finite_scores(normal_scores))[::-1]
  if flat.size == 0:
    raise ValueError("fpr_threshold needs at least one normal score.")
  allowed = int(np.floor(target_fpr * flat.size + 1e-9))
  return float(np.nextafter(flat[allowed], np.inf))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
  """Precision, recall, F1, false-positive rate and accuracy of `score >= threshold`.

  Args:
    labels: 0/1 or bool, 1 = anomalous (images (N,) or pixels (N, H, W)).
    scores: the same shape.
    threshold: the decision threshold.

  Returns:
    {"threshold", "precision", "recall", "f1", "fpr", "accuracy"}; nan where undefined (e.g.
    precision when nothing is called anomalous, recall without anomalous samples).
  """
  labels, scores = _as_labels(labels), np.asarray(scores).reshape(-1)
  _check_same_shape(labels, scores, "binary_metrics labels vs scores")
  predicted = _finite_scores(scores) >= threshold
  tp = float(np.sum(predicted & labels))
  fp = float(np.sum(predicted & ~labels))
  pos, neg = float(labels.sum()), float((~labels).sum())

  def ratio(a, b):
    return a / b if b > 0 else math.nan

  return {"threshold": float(threshold), "precision": ratio(tp, tp + fp),
          "recall": ratio(tp, pos), "f1": ratio(2 * tp, tp + fp + pos) if pos else math.nan,
          "fpr": ratio(fp, neg), "accuracy": ratio(tp + neg - fp, pos + neg)}


# DRAEM on DAGM 2007 (the paper's Table 4, mean of the 10 classes), fractions.
DAGM_PAPER = {"image_auroc": 0.990, "tpr": 0.965, "tnr": 0.994, "accuracy": 0.985}


def classification_metrics(labels: np.ndarray, scores: np.ndarray,
                           threshold: float) -> dict[str, float]:
  """DAGM's image classification metrics of `score >= threshold` (the paper's Table 4).

  Args:
    labels: (N,) 0/1 or bool, 1 = defective.
    scores: (N,) image scores.
    threshold: chosen without the test set.

  Returns:
    {"threshold", "tpr" (defective images called defective), "tnr" (defect-free images
    called defect-free), "accuracy" (all images classified right)}; nan where a class is
    absent.
  """
  labels, scores = _as_labels(labels), np.asarray(scores).reshape(-1)
  _check_same_shape(labels, scores, "classification_metrics labels vs scores")
  predicted = _finite_scores(scores) >= threshold
  pos, neg = int(labels.sum()), int((~labels).sum())
  tp, tn = int(np.sum(predicted & labels)), int(np.sum(~predicted & ~labels))
  return {"threshold": float(threshold),
          "tpr": tp / pos if pos else math.nan, "tnr": tn / neg if neg else math.nan,
          "accuracy": (tp + tn) / (pos + neg) if pos + neg else math.nan}


def dagm_table(category: str, metrics: Mapping[str, Any]) -> str:
  """Markdown table of a DAGM class's `metrics["dagm"]` next to the paper's 10-class mean."""
  lines = [f"### {category} (DAGM 2007; paper: mean of the 10 classes)", "",
           "| metric | ours (%) | paper (%) | ours - paper |", "|---|---:|---:|---:|"]
  for key, label in (("image_auroc", "image AUROC"), ("tpr", "TPR"), ("tnr", "TNR"),
                     ("accuracy", "classification accuracy")):
    value = metrics["dagm"].get(key)
    ours = None if value is None else 100.0 * float(value)
    paper = 100.0 * DAGM_PAPER[key]
    lines.append(f"| {label} | {_pct(ours)} | {_pct(paper)} | {_diff(ours, paper)} |")
  return "\n".join(lines) + "\n"


def normalize_scores(values: np.ndarray, threshold: float, low: float, high: float
                     ) -> np.ndarray:
  """Min-max normalisation that puts `threshold` at 0.5 (anomalib's convention).

  `clip((value - threshold) / (high - low) + 0.5, 0, 1)`: monotone (order preserved, ties at
  the clip limits), the threshold itself maps to 0.5 and every `score >= threshold` to >= 0.5.
  Decisions are still taken on the raw score, which rounding cannot blur.

  Args:
    values: raw scores or anomaly maps, any shape.
    threshold: the raw decision threshold.
    low, high: the raw minimum and maximum seen on the validation split.

  Returns:
    float64 array of the same shape, in [0, 1].
  """
  span = max(float(high) - float(low), 1e-12)
  return np.clip((np.asarray(values, np.float64) - threshold) / span + 0.5, 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# AU-PRO.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Regions:
  """Connected ground-truth regions of a stack of masks.

  Attributes:
    inv_size: (N*H*W,) float64, 1 / (size of the pixel's region), 0 on normal pixels.
    per_image: (N,) number of regions in each image.
  """
  inv_size: np.ndarray
  per_image: np.ndarray


def _regions(masks: np.ndarray) -> _Regions:
  masks = np.asarray(masks, dtype=bool)
  if masks.ndim != 3:
    raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}.")
  inv_size = np.zeros(masks.shape, np.float64)
  per_image = np.zeros(masks.shape[0], np.int64)
  for i, mask in enumerate(masks):
    if not mask.any():
      continue
    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(components.reshape(-1), minlength=count + 1).astype(np.float64)
    inv = np.zeros_like(sizes)
    inv[1:] = 1.0 / sizes[1:]
    inv_size[i] = inv[components]  # Label 0 (background) maps to 0.
    per_image[i] = count
  return _Regions(inv_size=inv_size.reshape(-1), per_image=per_image)


def _pro_curve(normal_flat: np.ndarray, regions: _Regions, num_regions: int, ranking: Ranking):
  """Exact (FPR, PRO, threshold) curve, from (0, 0) to (1, 1), FPR non-decreasing."""
  normal_sorted = normal_flat[ranking.order]
  num_normal = int(np.count_nonzero(normal_sorted))
  if num_normal == 0 or num_regions == 0:
    return None
  ends = ranking.group_ends()
  fp = np.cumsum(normal_sorted, dtype=np.int64)[ends]
  # Each region contributes 1/size per pixel above threshold: its covered fraction.
  pro = np.cumsum(regions.inv_size[ranking.order])[ends] / num_regions
  fpr = np.concatenate([[0.0], fp / float(num_normal)])
  pro = np.clip(np.concatenate([[0.0], pro]), 0.0, 1.0)  # Rounding can exceed 1 by ~1e-15.
  thresholds = np.concatenate([[np.inf], ranking.sorted_scores[ends]])
  return fpr, pro, thresholds


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
  """Trapezoidal area under y(x) for x in [x[0], limit], interpolating linearly at `limit`.

  Args:
    x: (K,) non-decreasing abscissae with x[0] <= limit.
    y: (K,) ordinates.
    limit: upper integration bound; if it lies between two points, the curve is cut there
      with the linearly interpolated y; beyond x[-1] nothing is added.

  Returns:
    The area.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  k = int(np.searchsorted(x, limit, side="right"))  # Points with x <= limit.
  xs, ys = x[:k], y[:k]
  if k < x.size and xs[-1] < limit:
    x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
    xs = np.append(xs, limit)
    ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
  return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def _check_fpr_limit(fpr_limit: float) -> None:
  if not 0.0 < fpr_limit <= 1.0:
    raise ConfigError(f"eval.aupro_fpr_limit must be in (0, 1], got {fpr_limit}.")


def aupro_curve(masks: np.ndarray, maps: np.ndarray):
  """The exact PRO curve of the MVTec AU-PRO, one point per distinct score.

  Regions are the 8-connected components of each image's ground truth. At threshold t,
  PRO = mean over all regions (of all images) of the fraction of the region's pixels with
  score >= t; FPR = fraction of all normal pixels (of all images) with score >= t.

  Args:
    masks: (N, H, W) bool ground truth.
    maps: (N, H, W) float anomaly maps.

  Returns:
    (fpr, pro, thresholds), each (T + 1,): the curve from (0, 0) (threshold +inf) through the
    T distinct scores in descending order to (1, 1); or None when there is no region or no
    normal pixel.
  """
  masks, maps = np.asarray(masks, dtype=bool), np.asarray(maps)
  _check_same_shape(masks, maps, "aupro masks vs maps")
  regions = _regions(masks)
  return _pro_curve(~masks.reshape(-1), regions, int(regions.per_image.sum()), Ranking.of(maps))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
  """MVTec AU-PRO: area under PRO(FPR) for FPR in [0, fpr_limit], divided by fpr_limit.

  Args:
    masks: (N, H, W) bool ground truth.
    maps: (N, H, W) float anomaly maps.
    fpr_limit: upper FPR bound in (0, 1]; the curve is interpolated linearly there.

  Returns:
    AU-PRO in [0, 1]; nan when there is no anomalous region or no normal pixel.
  """
  _check_fpr_limit(fpr_limit)
  curve = aupro_curve(masks, maps)
  if curve is None:
    return math.nan
  fpr, pro, _ = curve
  return area_up_to(fpr, pro, fpr_limit) / fpr_limit


# ------------------------------------------------------------------------------------------
# Ground truth and image scores.
# ------------------------------------------------------------------------------------------

# The reference resizes the uint8 mask bilinearly with OpenCV (uint8 output, rounded to the
# nearest integer), divides by 255 and truncates to int: only resized value 255 counts. On a
# float mask in [0, 1] resized bilinearly, the values that OpenCV would round to 255 are those
# >= 254.5 / 255.
PAPER_MASK_THRESHOLD = 1.0 - 0.5 / 255.0
STANDARD_MASK_THRESHOLD = 0.5


def gt_masks(masks: np.ndarray, protocol: str) -> np.ndarray:
  """Binarises resized ground-truth masks by the evaluation protocol's rule.

  Args:
    masks: float array (e.g. (N, H, W)) in [0, 1]: the masks after bilinear resizing.
    protocol: "paper": the reference's rule, value >= 1 - 0.5/255 (the resized uint8 value is
      exactly 255, since OpenCV rounds uint8 results); "standard": value >= 0.5.

  Returns:
    bool array of the same shape, True = anomalous.
  """
  if protocol == "paper":
    threshold = PAPER_MASK_THRESHOLD
  elif protocol == "standard":
    threshold = STANDARD_MASK_THRESHOLD
  else:
    raise ConfigError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}.")
  masks = np.asarray(masks, dtype=np.float64)
  if masks.size and (masks.min() < 0.0 or masks.max() > 1.0 + 1e-6):
    raise ValueError(f"ground-truth masks must be in [0, 1] (got [{masks.min()}, "
                     f"{masks.max()}]); divide uint8 masks by 255 first.")
  return masks >= threshold


def _check_filter_size(size: int) -> None:
  if size < 1 or size % 2 != 1:
    raise ConfigError(f"eval.mean_filter_size must be a positive odd integer, got {size}.")


def _box_sum(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Sum over a centred window of `size` along `axis`, zero padded, output of the same size."""
  r = size // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r + 1, r)  # One extra leading zero so that window sums are c[i + size] - c[i].
  c = np.cumsum(np.pad(x, pad), axis=axis)
  n = x.shape[axis]
  hi = np.take(c, np.arange(size, size + n), axis=axis)
  lo = np.take(c, np.arange(0, n), axis=axis)
  return hi - lo


def mean_filter(maps: np.ndarray, size: int = 21) -> np.ndarray:
  """size x size mean filter, stride 1, zero padding size // 2, padding counted in the mean.

  This is PyTorch's `avg_pool2d(x, size, stride=1, padding=size // 2)` (count_include_pad),
  the reference's image-score filter: an all-ones map reads (r+1)^2 / size^2 in a corner,
  r = size // 2 (121 / 441 = 0.2744 at size 21).

  Args:
    maps: (N, H, W) anomaly maps.
    size: odd window side.

  Returns:
    (N, H, W) float64 filtered maps.
  """
  _check_filter_size(size)
  maps = np.asarray(maps, dtype=np.float64)
  if maps.ndim != 3:
    raise ValueError(f"maps must be (N, H, W), got shape {maps.shape}.")
  # Separable: rows then columns; cumulative sums make it O(HW) whatever the size.
  return _box_sum(_box_sum(maps, size, axis=1), size, axis=2) / float(size * size)


def mean_filter_max(maps: np.ndarray, size: int = 21) -> np.ndarray:
  """Image scores: the maximum of each map after `mean_filter` (DRAEM_SPEC section 5).

  Args:
    maps: (N, H, W) anomaly maps.
    size: odd window side (the paper: 21).

  Returns:
    (N,) float64 image scores.
  """
  return mean_filter(maps, size).max(axis=(1, 2))


# ------------------------------------------------------------------------------------------
# All metrics of a category.
# ------------------------------------------------------------------------------------------

METRIC_NAMES = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "f1_max",
                "f1_threshold", "pixel_f1_max", "pixel_f1_threshold")


def _subset_metrics(image_keep, labels, scores, pixel_labels, pixel_ranking, normal_flat,
                    regions, fpr_limit, num_pixels_per_image):
  labels_s, scores_s = labels[image_keep], scores[image_keep]
  image_ranking = Ranking.of(scores_s)
  tp, fp, th = _binary_counts(labels_s, image_ranking)
  f1, f1_threshold = _f1_from_counts(tp, fp, th)
  out = {"image_auroc": _auroc_from_counts(tp, fp), "image_ap": _ap_from_counts(tp, fp),
         "f1_max": f1, "f1_threshold": f1_threshold}

  pixel_keep = np.repeat(image_keep, num_pixels_per_image)
  ranking = pixel_ranking if image_keep.all() else pixel_ranking.subset(pixel_keep)
  ptp, pfp, pth = _binary_counts(pixel_labels, ranking)
  pf1, pf1_threshold = _f1_from_counts(ptp, pfp, pth)
  out["pixel_auroc"] = _auroc_from_counts(ptp, pfp)
  out["pixel_ap"] = _ap_from_counts(ptp, pfp)
  out["pixel_f1_max"], out["pixel_f1_threshold"] = pf1, pf1_threshold
  num_regions = int(regions.per_image[image_keep].sum())
  curve = _pro_curve(normal_flat, regions, num_regions, ranking)
  out["aupro"] = (math.nan if curve is None else
                  area_up_to(curve[0], curve[1], fpr_limit) / fpr_limit)
  num_anomalous_pixels = int(ptp[-1]) if ptp.size else 0
  out["counts"] = {
      "images": int(image_keep.sum()),
      "anomalous_images": int(labels_s.sum()),
      "normal_images": int((~labels_s).sum()),
      "pixels": int(pixel_keep.sum()),
      "anomalous_pixels": num_anomalous_pixels,
      "regions": num_regions,
  }
  return {k: (float(v) if k != "counts" else v) for k, v in out.items()}


def evaluate_category(labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray,
                      maps: np.ndarray, defect_types: Sequence[str] | None = None,
                      fpr_limit: float = 0.3) -> dict[str, Any]:
  """Every metric of one category, overall and per defect type.

  Pixel metrics (AUROC, AP, AU-PRO, pixel F1) share one sort of all pixels; each defect type
  is evaluated on its images plus all normal (label 0) images, reusing that sort.

  Args:
    labels: (N,) 0/1 or bool, 1 = anomalous image.
    image_scores: (N,) image scores (e.g. `mean_filter_max(maps)`).
    masks: (N, H, W) bool ground truth (see `gt_masks`).
    maps: (N, H, W) float anomaly maps.
    defect_types: optional (N,) names, e.g. "good", "broken_large"; the types of anomalous
      images (label 1) get an entry each in "per_defect_type".
    fpr_limit: AU-PRO integration limit (config eval.aupro_fpr_limit).

  Returns:
    {"image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "f1_max", "f1_threshold",
     "pixel_f1_max", "pixel_f1_threshold": float (fractions in [0, 1] or nan; thresholds are
     scores: `score >= threshold` is anomalous), "counts": {"images", "anomalous_images",
     "normal_images", "pixels", "anomalous_pixels", "regions"}, "per_defect_type":
     {type: the same keys except "per_defect_type"}}.
  """
  _check_fpr_limit(fpr_limit)
  labels = _as_labels(labels)
  scores = np.asarray(image_scores).reshape(-1)
  masks, maps = np.asarray(masks, dtype=bool), np.asarray(maps)
  _check_same_shape(masks, maps, "evaluate_category masks vs maps")
  if masks.ndim != 3 or labels.shape != (masks.shape[0],) or scores.shape != labels.shape:
    raise ValueError(f"expected labels (N,), image_scores (N,), masks/maps (N, H, W); got "
                     f"{labels.shape}, {scores.shape}, {masks.shape}.")
  n, h, w = masks.shape
  pixel_labels = masks.reshape(-1)
  normal_flat = ~pixel_labels
  regions = _regions(masks)
  pixel_ranking = Ranking.of(maps)
  common = dict(labels=labels, scores=scores, pixel_labels=pixel_labels,
                pixel_ranking=pixel_ranking, normal_flat=normal_flat, regions=regions,
                fpr_limit=fpr_limit, num_pixels_per_image=h * w)
  result = _subset_metrics(np.ones(n, bool), **common)
  result["per_defect_type"] = {}
  if defect_types is not None:
    types = np.asarray([str(t) for t in defect_types])
    if types.shape != labels.shape:
      raise ValueError(f"defect_types must have one entry per image ({n}), got {types.shape}.")
    for defect in sorted(set(types[labels].tolist())):
      keep = (types == defect) | ~labels
      result["per_defect_type"][defect] = _subset_metrics(keep, **common)
  return result


def json_safe(value: Any) -> Any:
  """A copy of nested dicts/lists/floats with nan/inf replaced by None (strict JSON)."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


# ------------------------------------------------------------------------------------------
# Published results (DRAEM_SPEC section 6), in percent.
# ------------------------------------------------------------------------------------------

PAPER_METRICS = ("image_auroc", "pixel_auroc", "pixel_ap")

PAPER_RESULTS: dict[str, dict[str, float]] = {
    name: dict(zip(PAPER_METRICS, values)) for name, values in {
        "bottle": (99.2, 99.1, 86.5),
        "capsule": (98.5, 94.3, 49.4),
        "grid": (99.9, 99.7, 65.7),
        "leather": (100.0, 98.6, 75.3),
        "pill": (98.9, 97.6, 48.5),
        "tile": (99.6, 99.2, 92.3),
        "transistor": (93.1, 90.9, 50.7),
        "zipper": (100.0, 98.8, 81.5),
        "cable": (91.8, 94.7, 52.4),
        "carpet": (97.0, 95.5, 53.5),
        "hazelnut": (100.0, 99.7, 92.9),
        "metal_nut": (98.7, 99.5, 96.3),
        "screw": (93.9, 97.6, 58.2),
        "toothbrush": (100.0, 98.1, 44.7),
        "wood": (99.1, 96.4, 77.7),
    }.items()
}
# Mean over the 15 categories as published in the paper, and with the authors' checkpoints.
PAPER_MEAN = {"image_auroc": 98.0, "pixel_auroc": 97.3, "pixel_ap": 68.4}
RELEASED_CHECKPOINTS_MEAN = {"image_auroc": 98.1, "pixel_auroc": 97.5, "pixel_ap": 68.9}

_LABELS = {"image_auroc": "image AUROC", "image_ap": "image AP", "pixel_auroc": "pixel AUROC",
           "pixel_ap": "pixel AP", "aupro": "AU-PRO",
           # Tuned on the test set itself: an optimistic upper reference, not a deployable number.
           "f1_max": "image F1-max (test-tuned, optimistic)",
           "pixel_f1_max": "pixel F1-max (test-tuned, optimistic)",
           "validation_image_f1": "image F1 at the validation threshold",
           "validation_pixel_f1": "pixel F1 at the validation threshold"}


def _pct(value: float | None) -> str:
  if value is None or not math.isfinite(value):
    return "n/a"
  return f"{value:.1f}"


def _diff(ours: float | None, paper: float | None) -> str:
  if ours is None or paper is None or not (math.isfinite(ours) and math.isfinite(paper)):
    return "n/a"
  return f"{ours - paper:+.1f}"


def comparison_table(category: str, metrics: Mapping[str, Any]) -> str:
  """Markdown table of one category's measured metrics next to the published ones.

  Args:
    category: MVTec category name (another name gets "n/a" in the paper column).
    metrics: `evaluate_category` output (fractions in [0, 1]).

  Returns:
    Markdown text: a heading line and a table metric | ours (%) | paper (%) | ours - paper.
  """
  paper = PAPER_RESULTS.get(category, {})
  lines = [f"### {category}", "", "| metric | ours (%) | paper (%) | ours - paper |",
           "|---|---:|---:|---:|"]
  chosen = metrics.get("validation_threshold") or {}
  values = dict(metrics, validation_image_f1=chosen.get("image_f1"),
                validation_pixel_f1=chosen.get("pixel_f1"))
  for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro",
              "validation_image_f1", "validation_pixel_f1", "f1_max", "pixel_f1_max"):
    if key.startswith("validation_") and not chosen:
      continue  # No validation split (fraction 0): only the test-tuned reference exists.
    value = values.get(key)
    ours = None if value is None else 100.0 * float(value)
    lines.append(f"| {_LABELS[key]} | {_pct(ours)} | {_pct(paper.get(key))} | "
                 f"{_diff(ours, paper.get(key))} |")
  return "\n".join(lines) + "\n"


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown table over several categories with their plain mean, ours vs paper.

  The paper's mean row is the published mean when all 15 categories are present, else the
  mean of the published numbers of the categories given.

  Args:
    results: {category: `evaluate_category` output}.

  Returns:
    Markdown text, one row per category plus a "mean" row.
  """
  header = "| category | " + " | ".join(
      f"{_LABELS[k]} ours | paper | diff" for k in PAPER_METRICS) + " | AU-PRO ours |"
  lines = [header, "|---|" + "---:|" * (3 * len(PAPER_METRICS) + 1)]

  def row(name, ours, paper):
    cells = []
    for k in PAPER_METRICS:
      cells += [_pct(ours.get(k)), _pct(paper.get(k)), _diff(ours.get(k), paper.get(k))]
    cells.append(_pct(ours.get("aupro")))
    return f"| {name} | " + " | ".join(cells) + " |"

  ours_all = {}
  for category, metrics in results.items():
    ours = {k: 100.0 * float(metrics[k]) for k in (*PAPER_METRICS, "aupro") if k in metrics}
    ours_all[category] = ours
    lines.append(row(category, ours, PAPER_RESULTS.get(category, {})))
  if results:
    mean_ours = {k: float(np.mean([o.get(k, math.nan) for o in ours_all.values()]))
                 for k in (*PAPER_METRICS, "aupro")}
    if set(results) == set(PAPER_RESULTS):
      mean_paper = dict(PAPER_MEAN)
    elif set(results) <= set(PAPER_RESULTS):
      mean_paper = {k: float(np.mean([PAPER_RESULTS[c][k] for c in results]))
                    for k in PAPER_METRICS}
    else:
      mean_paper = {}
    lines.append(row("**mean**", mean_ours, mean_paper))
  return "\n".join(lines) + "\n"
