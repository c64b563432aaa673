"""Metrics of DRAEM_SPEC section 5 against hand-computed values, sklearn, scipy and loops."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from draem_jax.evaluation import metrics
from draem_jax.errors import ConfigError

# ------------------------------------------------------------------------------------------
# AU-PRO by hand.
# ------------------------------------------------------------------------------------------


def _hand_example():
  """2 images 4x4, 3 regions, 24 normal pixels, scores at five levels (ties across classes).

  Image A: R1 = {(0,0),(0,1),(1,0)} (3 px), R2 = {(2,3),(3,2),(3,3)} (3 px).
  Image B: R3 = {(1,1),(2,2)} (2 px): ONE region only with 8-connectivity (diagonal).
  Normal pixels: 10 in A + 14 in B = 24.
  Scores: 0.9 on R1 and (1,1) of R3; 0.7 on (2,3),(3,2) of R2 and on 2 normal pixels of B;
  0.5 on (2,2) of R3 and on 4 normal pixels; 0.3 on (3,3) of R2 and 4 normal pixels;
  0.1 on the 14 remaining normal pixels.
  """
  masks = np.zeros((2, 4, 4), bool)
  masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 0] = True
  masks[0, 2, 3] = masks[0, 3, 2] = masks[0, 3, 3] = True
  masks[1, 1, 1] = masks[1, 2, 2] = True
  maps = np.full((2, 4, 4), 0.1)
  maps[0, 0, 0] = maps[0, 0, 1] = maps[0, 1, 0] = 0.9
  maps[1, 1, 1] = 0.9
  maps[0, 2, 3] = maps[0, 3, 2] = 0.7
  maps[1, 0, 0] = maps[1, 0, 1] = 0.7  # 2 normal pixels (B).
  maps[1, 2, 2] = 0.5
  maps[1, 0, 2] = maps[1, 0, 3] = maps[0, 1, 2] = maps[0, 1, 3] = 0.5  # 4 normal pixels.
  maps[0, 3, 3] = 0.3
  maps[0, 2, 0] = maps[0, 2, 1] = maps[1, 3, 0] = maps[1, 3, 1] = 0.3  # 4 normal pixels.
  return masks, maps


def test_aupro_curve_by_hand():
  masks, maps = _hand_example()
  fpr, pro, thresholds = metrics.aupro_curve(masks, maps)
  # t=0.9: FP 0, PRO (1 + 0 + 1/2)/3;  t=0.7: FP 2, PRO (1 + 2/3 + 1/2)/3 = 13/18;
  # t=0.5: FP 6, PRO (1 + 2/3 + 1)/3 = 8/9;  t=0.3: FP 10, PRO 1;  t=0.1: FP 24, PRO 1.
  np.testing.assert_allclose(fpr, [0, 0, 2 / 24, 6 / 24, 10 / 24, 1], atol=1e-15)
  np.testing.assert_allclose(pro, [0, 0.5, 13 / 18, 8 / 9, 1, 1], atol=1e-12)
  np.testing.assert_allclose(thresholds[1:], [0.9, 0.7, 0.5, 0.3, 0.1])


def test_aupro_by_hand_with_interpolation_at_limit():
  masks, maps = _hand_example()
  # Trapezoids: [0, 1/12]: (1/2 + 13/18)/2 * 1/12 = 11/216;
  # [1/12, 1/4]: (13/18 + 8/9)/2 * 1/6 = 29/216;
  # [1/4, 0.3]: PRO(0.3) = 8/9 + (1 - 8/9) / (5/12 - 1/4) * 0.05 = 8/9 + 1/30,
  #             area (8/9 + 8/9 + 1/30)/2 * 0.05 = 163/3600.
  # Total 40/216 + 163/3600 = 2489/10800, divided by 0.3 = 2489/3240.
  assert metrics.aupro(masks, maps) == pytest.approx(2489 / 3240, abs=1e-12)
  # Limit exactly on a curve point: no interpolation, 40/216 / 0.25 = 20/27.
  assert metrics.aupro(masks, maps, fpr_limit=0.25) == pytest.approx(20 / 27, abs=1e-12)
  # Whole curve: 40/216 + (8/9 + 1)/2 * 1/6 + 1 * 7/12 = 100/108.
  assert metrics.aupro(masks, maps, fpr_limit=1.0) == pytest.approx(25 / 27, abs=1e-12)
  # Inside the first segment: PRO(0.05) = 1/2 + (13/18 - 1/2) * 0.6 = 19/30,
  # area (1/2 + 19/30)/2 * 0.05 = 17/600, / 0.05 = 17/30.
  assert metrics.aupro(masks, maps, fpr_limit=0.05) == pytest.approx(17 / 30, abs=1e-12)


def test_aupro_regions_are_eight_connected():
  masks, maps = _hand_example()
  # Had (1,1) and (2,2) of image B been two regions (4-connectivity), the t=0.9 PRO would be
  # (1 + 0 + 1 + 0)/4 = 1/2 too but t=0.7 would give (1 + 2/3 + 1 + 0)/4 = 2/3, not 13/18.
  _, pro, _ = metrics.aupro_curve(masks, maps)
  assert pro[2] == pytest.approx(13 / 18)


def _reference_aupro(masks, maps, fpr_limit):
  """Straightforward loop: every unique threshold, regions by scipy, clipped trapezoids."""
  regions = []
  for mask, amap in zip(masks, maps):
    labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
    regions += [amap[labeled == k] for k in range(1, count + 1)]
  normal_scores = maps[~masks]
  xs, ys = [0.0], [0.0]
  for t in np.unique(maps)[::-1]:
    xs.append(np.mean(normal_scores >= t))
    ys.append(np.mean([np.mean(r >= t) for r in regions]))
  area = 0.0
  for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
    if x0 >= fpr_limit or x1 == x0:
      continue
    if x1 > fpr_limit:  # Cut the segment at the limit.
      y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
      x1 = fpr_limit
    area += (x1 - x0) * (y0 + y1) / 2
  return area / fpr_limit


def _random_masks(rng, n, h, w):
  masks = np.zeros((n, h, w), bool)
  for i in range(n):
    for _ in range(rng.integers(0, 4)):
      y, x = rng.integers(0, h - 2, size=2)
      sy, sx = rng.integers(1, 7, size=2)
      masks[i, y:y + sy, x:x + sx] = True
    masks[i] |= rng.random((h, w)) < 0.01  # Single pixels and diagonal neighbours.
  masks[0, 1, 1] = True  # At least one region.
  return masks


@pytest.mark.parametrize("decimals", [1, 2, None])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.5, 1.0])
def test_aupro_matches_reference_loop(decimals, fpr_limit):
  rng = np.random.default_rng(decimals or 7)
  masks = _random_masks(rng, 4, 20, 24)
  maps = np.clip(rng.random(masks.shape) * 0.8 + masks * 0.3 * rng.random(masks.shape), 0, 1)
  if decimals is not None:
    maps = np.round(maps, decimals)  # Many ties, within and across classes.
  assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(
      _reference_aupro(masks, maps, fpr_limit), abs=1e-10)


def test_aupro_degenerate_and_bad_limit():
  maps = np.random.default_rng(0).random((2, 5, 5))
  assert math.isnan(metrics.aupro(np.zeros((2, 5, 5), bool), maps))
  assert math.isnan(metrics.aupro(np.ones((2, 5, 5), bool), maps))
  assert metrics.aupro_curve(np.zeros((2, 5, 5), bool), maps) is None
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ConfigError, match="eval.aupro_fpr_limit"):
      metrics.aupro(np.eye(5, dtype=bool)[None], maps[:1], fpr_limit=bad)
  with pytest.raises(ValueError, match="NaN"):
    metrics.aupro(np.eye(5, dtype=bool)[None], np.full((1, 5, 5), np.nan))


def test_perfect_and_inverted_aupro():
  masks = _random_masks(np.random.default_rng(3), 3, 12, 12)
  assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
  assert metrics.aupro(masks, 1.0 - masks) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------
# Image / pixel metrics against sklearn.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_and_pixel_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.random(40) < 0.4
  scores = np.round(rng.random(40) + 0.3 * labels, 1 + seed)  # Ties for seed 0.
  assert metrics.image_auroc(labels, scores) == pytest.approx(
      skm.roc_auc_score(labels, scores), abs=1e-12)
  masks = _random_masks(rng, 5, 16, 16)
  maps = rng.random(masks.shape).astype(np.float32) + 0.2 * masks
  if seed == 0:
    maps = np.round(maps, 2)
  y, s = masks.reshape(-1), maps.reshape(-1)
  assert metrics.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  assert metrics.pixel_ap(masks, maps) == pytest.approx(
      skm.average_precision_score(y, s), abs=1e-12)
  assert metrics.image_ap(labels, scores) == pytest.approx(
      skm.average_precision_score(labels, scores), abs=1e-12)


def test_one_class_gives_nan():
  scores = np.linspace(0, 1, 6)
  assert math.isnan(metrics.image_auroc(np.zeros(6), scores))
  assert math.isnan(metrics.image_auroc(np.ones(6), scores))
  empty = np.zeros((1, 2, 3), bool)
  assert math.isnan(metrics.pixel_auroc(empty, scores.reshape(1, 2, 3)))
  assert math.isnan(metrics.pixel_ap(empty, scores.reshape(1, 2, 3)))
  assert all(math.isnan(v) for v in metrics.f1_max(np.zeros(6), scores))
  with pytest.raises(ValueError, match="labels"):
    metrics.image_auroc(np.array([0, 2, 1]), np.ones(3))


def _brute_force_f1(labels, scores):
  best = (-1.0, None)
  for t in np.unique(scores):
    predicted = scores >= t
    tp = np.sum(predicted & labels)
    f1 = 2 * tp / (predicted.sum() + labels.sum())
    best = max(best, (f1, t))  # Ties: the higher threshold wins, as documented.
  return best


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_matches_brute_force_and_sklearn_curve(seed):
  rng = np.random.default_rng(seed)
  labels = rng.random(60) < 0.3
  scores = np.round(rng.random(60) + 0.4 * labels, 1 if seed % 2 else 3)
  f1, threshold = metrics.f1_max(labels, scores)
  f1_ref, t_ref = _brute_force_f1(labels, scores)
  assert f1 == pytest.approx(f1_ref, abs=1e-12)
  assert threshold == t_ref
  precision, recall, _ = skm.precision_recall_curve(labels, scores)
  with np.errstate(invalid="ignore"):
    sk_f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
  assert f1 == pytest.approx(sk_f1.max(), abs=1e-12)
  assert skm.f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)


def test_ranking_subset_equals_fresh_sort():
  rng = np.random.default_rng(5)
  scores = np.round(rng.random(500), 2)
  keep = rng.random(500) < 0.4
  sub = metrics.Ranking.of(scores).subset(keep)
  np.testing.assert_array_equal(sub.sorted_scores, np.sort(scores[keep])[::-1])
  np.testing.assert_array_equal(scores[sub.order], sub.sorted_scores)
  assert np.all(keep[sub.order]) and sub.order.size == keep.sum()


# ------------------------------------------------------------------------------------------
# Ground-truth protocols and image scores.
# ------------------------------------------------------------------------------------------


def test_gt_mask_protocols():
  values = np.array([1.0, 0.999, 254.5 / 255, 0.998, 254 / 255, 0.5, 0.49999, 0.0])
  # paper: resized uint8 value == 255 <=> float >= 254.5/255 (OpenCV rounds): 0.999 is 254.7.
  np.testing.assert_array_equal(metrics.gt_masks(values, "paper"),
                                [True, True, True, False, False, False, False, False])
  np.testing.assert_array_equal(metrics.gt_masks(values, "standard"),
                                [True, True, True, True, True, True, False, False])
  assert metrics.PAPER_MASK_THRESHOLD == pytest.approx(0.998039, abs=1e-6)
  # The paper rule reproduced on uint8 values: int(round(v * 255) / 255) == 1.
  grid = np.linspace(0, 1, 100001)
  reference = (np.round(grid * 255) / 255).astype(int) == 1
  np.testing.assert_array_equal(metrics.gt_masks(grid, "paper"), reference)
  with pytest.raises(ConfigError, match="eval.protocol"):
    metrics.gt_masks(values, "nearest")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.gt_masks(values * 255, "standard")


def test_mean_filter_corner_of_ones():
  maps = np.ones((1, 64, 48))
  filtered = metrics.mean_filter(maps, 21)
  assert filtered[0, 0, 0] == pytest.approx(121 / 441, abs=1e-12)
  assert filtered[0, 0, 0] == pytest.approx(0.2744, abs=1e-4)
  assert filtered[0, 10, 10] == pytest.approx(1.0)  # No padding in the window.
  assert filtered[0, 0, 10] == pytest.approx(11 / 21)
  assert metrics.mean_filter_max(maps, 21)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("size", [21, 3, 1])
def test_mean_filter_matches_scipy(size):
  maps = np.random.default_rng(size).random((3, 30, 40))
  reference = ndimage.uniform_filter(maps, size=(1, size, size), mode="constant", cval=0.0)
  np.testing.assert_allclose(metrics.mean_filter(maps, size), reference, atol=1e-12)
  np.testing.assert_allclose(metrics.mean_filter_max(maps, size),
                             reference.max(axis=(1, 2)), atol=1e-12)


def test_mean_filter_matches_direct_loop():
  maps = np.random.default_rng(9).random((1, 9, 7))
  size, r = 5, 2
  padded = np.pad(maps[0], r)
  direct = np.array([[padded[i:i + size, j:j + size].sum() / size**2 for j in range(7)]
                     for i in range(9)])
  np.testing.assert_allclose(metrics.mean_filter(maps, size)[0], direct, atol=1e-12)


def test_mean_filter_size_must_be_odd():
  with pytest.raises(ConfigError, match="eval.mean_filter_size"):
    metrics.mean_filter_max(np.zeros((1, 8, 8)), 4)


# ------------------------------------------------------------------------------------------
# evaluate_category.
# ------------------------------------------------------------------------------------------


def _category(rng):
  types = np.array(["good"] * 6 + ["crack"] * 4 + ["scratch"] * 5)
  labels = types != "good"
  masks = np.zeros((15, 24, 24), bool)
  masks[labels] = _random_masks(rng, int(labels.sum()), 24, 24)
  maps = np.clip(rng.random(masks.shape) * 0.7 + masks * 0.4 * rng.random(masks.shape), 0, 1)
  scores = metrics.mean_filter_max(maps, 5)
  return labels, scores, masks, maps, types


def test_evaluate_category_overall_and_per_defect():
  labels, scores, masks, maps, types = _category(np.random.default_rng(11))
  result = metrics.evaluate_category(labels, scores, masks, maps, types, fpr_limit=0.3)
  assert set(result["per_defect_type"]) == {"crack", "scratch"}
  for entry in [result, *result["per_defect_type"].values()]:
    for key in metrics.METRIC_NAMES:
      assert 0.0 <= entry[key] <= 1.0, key
  assert result["counts"] == {
      "images": 15, "anomalous_images": 9, "normal_images": 6, "pixels": 15 * 24 * 24,
      "anomalous_pixels": int(masks.sum()), "regions": result["counts"]["regions"]}
  # Overall numbers equal the single-metric functions.
  assert result["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
  assert result["image_ap"] == pytest.approx(skm.average_precision_score(labels, scores),
                                             abs=1e-12)
  assert result["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))
  assert result["pixel_ap"] == pytest.approx(
      skm.average_precision_score(masks.ravel(), maps.ravel()))
  assert result["aupro"] == pytest.approx(metrics.aupro(masks, maps, 0.3))
  assert (result["f1_max"], result["f1_threshold"]) == metrics.f1_max(labels, scores)
  assert (result["pixel_f1_max"], result["pixel_f1_threshold"]) == metrics.f1_max(masks, maps)
  # Each defect type: its images plus all good images, equal to a fresh computation.
  keep = (types == "crack") | (types == "good")
  crack = result["per_defect_type"]["crack"]
  assert crack["counts"]["images"] == 10 and crack["counts"]["normal_images"] == 6
  assert crack["image_auroc"] == pytest.approx(metrics.image_auroc(labels[keep], scores[keep]))
  assert crack["image_ap"] == pytest.approx(
      skm.average_precision_score(labels[keep], scores[keep]), abs=1e-12)
  assert crack["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks[keep], maps[keep]))
  assert crack["pixel_ap"] == pytest.approx(metrics.pixel_ap(masks[keep], maps[keep]))
  assert crack["aupro"] == pytest.approx(metrics.aupro(masks[keep], maps[keep]))
  # Strict JSON after json_safe (nan -> null).
  text = json.dumps(metrics.json_safe({**result, "x": math.nan}), allow_nan=False)
  assert '"x": null' in text


def test_evaluate_category_without_defect_types_and_shape_errors():
  labels, scores, masks, maps, _ = _category(np.random.default_rng(12))
  result = metrics.evaluate_category(labels, scores, masks, maps)
  assert result["per_defect_type"] == {}
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.evaluate_category(labels, scores, masks, maps[:, :-1])
  with pytest.raises(ValueError, match="defect_types"):
    metrics.evaluate_category(labels, scores, masks, maps, ["good"] * 3)


# ------------------------------------------------------------------------------------------
# Published numbers.
# ------------------------------------------------------------------------------------------


def test_paper_results_table():
  assert len(metrics.PAPER_RESULTS) == 15
  assert metrics.PAPER_RESULTS["bottle"] == {
      "image_auroc": 99.2, "pixel_auroc": 99.1, "pixel_ap": 86.5}
  assert metrics.PAPER_RESULTS["screw"] == {
      "image_auroc": 93.9, "pixel_auroc": 97.6, "pixel_ap": 58.2}
  assert metrics.PAPER_RESULTS["metal_nut"]["pixel_ap"] == 96.3
  # The published means are the rounded means of the per-category numbers.
  for key, published in metrics.PAPER_MEAN.items():
    mean = np.mean([r[key] for r in metrics.PAPER_RESULTS.values()])
    assert abs(mean - published) <= 0.05, key
  assert metrics.PAPER_MEAN == {"image_auroc": 98.0, "pixel_auroc": 97.3, "pixel_ap": 68.4}
  assert metrics.RELEASED_CHECKPOINTS_MEAN == {
      "image_auroc": 98.1, "pixel_auroc": 97.5, "pixel_ap": 68.9}


def test_comparison_tables():
  measured = {"image_auroc": 0.95, "pixel_auroc": 0.991, "pixel_ap": 0.8, "aupro": 0.9,
              "f1_max": 0.93, "pixel_f1_max": math.nan}
  table = metrics.comparison_table("bottle", measured)
  assert "| image AUROC | 95.0 | 99.2 | -4.2 |" in table
  assert "| pixel AUROC | 99.1 | 99.1 | +0.0 |" in table
  assert "| pixel AP | 80.0 | 86.5 | -6.5 |" in table
  assert "| AU-PRO | 90.0 | n/a | n/a |" in table
  assert "| pixel F1-max (test-tuned, optimistic) | n/a | n/a | n/a |" in table
  assert "| image AP | n/a | n/a | n/a |" in table  # Not in `measured`; the paper has none.
  assert "validation threshold" not in table  # No validation split: no such rows.
  chosen = metrics.comparison_table("bottle", {**measured, "image_ap": 0.97,
                                               "validation_threshold": {"image_f1": 0.9}})
  assert "| image AP | 97.0 | n/a | n/a |" in chosen
  assert "| image F1 at the validation threshold | 90.0 | n/a | n/a |" in chosen
  assert "| image AUROC | 95.0 | n/a | n/a |" in metrics.comparison_table("mine", measured)
  everything = {c: {k: v / 100 for k, v in r.items()} for c, r in metrics.PAPER_RESULTS.items()}
  summary = metrics.summary_table(everything)
  mean_row = summary.strip().splitlines()[-1]
  assert mean_row.startswith("| **mean** | 98.0 | 98.0 | -0.0 | 97.3 | 97.3 | +0.0 | 68.4 | 68.4")
  two = metrics.summary_table({"bottle": measured, "tile": measured})
  assert two.strip().splitlines()[-1].startswith("| **mean** | 95.0 | 99.4 | -4.4 |")
