"""The HTML evaluation report: valid page, existing links, the numbers of metrics.json, worst
cases first, rendering in a headless browser; and the ROC curve it plots."""

from html.parser import HTMLParser
import json
from pathlib import Path
import shutil
import subprocess
from urllib.parse import unquote
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as skm

from draem_jax.evaluation import metrics
from draem_jax.evaluation import report
from draem_jax.evaluation import visualize

# Three groups; the scores put one defective image of each type below the threshold (0.5,
# set below) and one good image above it.
_SCORES = {"good": [0.1, 0.2, 0.7, 0.3, 0.15, 0.05], "crack": [0.9, 0.4, 0.8, 0.95, 0.3],
           "scratch": [0.6, 0.45, 0.99, 0.85]}
_SIZE = 16


def _eval_inputs():
  rng = np.random.default_rng(0)
  labels, types, names, scores, maps, gt = [], [], [], [], [], []
  for defect, group in _SCORES.items():
    for i, score in enumerate(group):
      label = int(defect != "good")
      mask = np.zeros((_SIZE, _SIZE), bool)
      if label:
        y, x = rng.integers(2, 10, size=2)
        mask[y:y + 5, x:x + 4] = True
      amap = np.clip(0.1 * rng.random((_SIZE, _SIZE)) + score * mask * 0.9, 0, 1)
      labels.append(label)
      types.append(defect)
      names.append(f"{i:03d}.png")
      scores.append(score)
      maps.append(amap)
      gt.append(mask)
  return (np.asarray(labels), np.asarray(types), names, np.asarray(scores), np.stack(maps),
          np.stack(gt))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("eval") / "7"
  labels, types, names, scores, maps, gt = _eval_inputs()
  result = metrics.evaluate_category(labels, scores, gt, maps, types)
  result.update(category="bottle", step=7, protocol="paper", has_masks=True,
                num_test_images=len(labels), image_ap=0.8765)  # A key the report has no name for.
  saved = metrics.json_safe(result)
  (out / "metrics.json").parent.mkdir(parents=True)
  (out / "metrics.json").write_text(json.dumps(saved))
  for i in range(len(labels) - 1):  # The last image has no overlay: it must not be linked.
    big = lambda x: np.kron(x, np.ones((8, 8) + (1,) * (x.ndim - 2), x.dtype))  # 128 px tiles.
    image = np.full((_SIZE, _SIZE, 3), 90 + 10 * i, np.uint8)
    picture = visualize.panel(big(image), big(maps[i]), 0.5, big(gt[i]),
                              title=f"{types[i]}/{names[i]} score {scores[i]:.3f}")
    visualize.save_png(out / "overlays" / types[i] / f"{Path(names[i]).stem}.png", picture)
  path = report.write_report(out, saved, labels, types, names, scores, maps, gt, threshold=0.5,
                             config={"data": {"category": "bottle"}, "train": {"seed": 3}})
  return out, path, (labels, types, names, scores)


class _Collector(HTMLParser):
  """Collects links, the metric cells and the gallery figures of a report page."""

  def __init__(self):
    super().__init__()
    self.links, self.cells, self.sections, self._cell, self._table = [], {}, [], None, None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    for name in ("href", "src"):
      if name in attrs:
        self.links.append(attrs[name])
    if tag == "table":
      self._table = attrs.get("id")
    if tag == "section":
      self.sections.append((attrs["data-defect"], []))
    if tag == "figure":
      self.sections[-1][1].append((int(attrs["data-index"]), attrs["data-kind"]))
    if tag == "td" and "data-key" in attrs:
      self._cell = [self._table, attrs["data-key"], attrs["data-value"], ""]

  def handle_data(self, data):
    if self._cell is not None:
      self._cell[3] += data

  def handle_endtag(self, tag):
    if tag == "td" and self._cell is not None:
      table, key, value, text = self._cell
      self.cells.setdefault(table, []).append((key, value, text.strip()))
      self._cell = None


def _parse(path: Path) -> _Collector:
  text = path.read_text()
  ET.fromstring(text.split("\n", 1)[1])  # Strictly well-formed (raises on a broken tag).
  collector = _Collector()
  collector.feed(text)
  collector.close()
  return collector


def test_report_is_valid_links_existing_files_and_shows_metrics_json(report_dir):
  out, path, (labels, *_) = report_dir
  assert path == out / "report.html"
  page = _parse(path)
  assert page.links, "the report links its plots and overlays"
  for link in page.links:
    assert "://" not in link and not link.startswith("/"), link  # Nothing from the network.
    assert (out / unquote(link)).is_file(), link
  images = [l for l in page.links if l.startswith("overlays/")]
  assert len(set(images)) == len(labels) - 1  # Every overlay that exists, and only those.
  plots = sorted(p.name for p in (out / "report_files").iterdir())
  assert plots == ["image_roc.png", "pixel_roc.png", "pro.png", "scores.png"]
  saved = json.loads((out / "metrics.json").read_text())
  shown = {key: (value, text) for key, value, text in page.cells["metrics"]}
  numeric = [k for k, v in saved.items() if isinstance(v, (int, float)) and
             k not in ("step", "num_test_images") and not isinstance(v, bool)]
  assert "image_ap" in numeric and set(shown) == set(numeric)
  for key in numeric:
    value, text = shown[key]
    assert float(value) == saved[key], key
    expected = f"{saved[key]:.4g}" if "threshold" in key else f"{100 * saved[key]:.1f}"
    assert text == expected, key
  per_type = [(k, v) for k, v, _ in page.cells["per-defect"]]
  for defect, entry in saved["per_defect_type"].items():
    assert ("image_auroc", repr(float(entry["image_auroc"]))) in per_type, defect
  assert "checkpoint step 7" in path.read_text()


def test_gallery_shows_misclassified_images_first(report_dir):
  _, path, (labels, types, _, scores) = report_dir
  page = _parse(path)
  expected = np.where(labels == 1, np.where(scores >= 0.5, "TP", "FN"),
                      np.where(scores >= 0.5, "FP", "TN"))
  seen = []
  for defect, figures in page.sections:
    kinds = [k for _, k in figures]
    wrong = [k in ("FN", "FP") for k in kinds]
    assert wrong == sorted(wrong, reverse=True), (defect, kinds)  # Misclassified first.
    assert any(wrong), defect  # Each group here holds one.
    for index, kind in figures:
      assert types[index] == defect and kind == expected[index]
      seen.append(index)
    # The most wrongly scored first: lowest anomalous score, highest good score.
    first = figures[0][0]
    members = np.flatnonzero(types == defect)
    worst = members[np.argmin(scores[members])] if defect != "good" else \
        members[np.argmax(scores[members])]
    assert first == worst
  assert sorted(seen) == list(range(len(labels)))


def test_report_without_masks_has_image_plots_only(tmp_path):
  labels, types, names, scores, _, _ = _eval_inputs()
  saved = {"category": "my_parts", "step": 3, "has_masks": False,
           "image_auroc": metrics.image_auroc(labels, scores), "f1_threshold": None}
  path = report.write_report(tmp_path, saved, labels, types, names, scores)
  page = _parse(path)
  assert sorted(unquote(l) for l in page.links) == ["report_files/image_roc.png"] * 2 + \
      ["report_files/scores.png"] * 2  # Each plot is an image and a link to itself.
  assert "No ground-truth masks" in path.read_text()
  assert {k for k, _, _ in page.cells["metrics"]} == {"image_auroc", "f1_threshold"}


def test_report_shows_validation_threshold_and_names_threshold_and_score(tmp_path,
                                                                         monkeypatch):
  # A run with a validation split and eval.image_score='p99': the page shows the test split's
  # metrics at the validation thresholds (real defects) before the validation split's own
  # figures (synthetic anomalies, labelled so), and the histogram names the real threshold
  # kind and image score.
  labels, types, names, scores, _, _ = _eval_inputs()
  at = {"image_threshold": 0.5, "image_precision": 0.75, "image_recall": 0.6,
        "image_f1": 0.6667, "image_fpr": 0.1667, "image_accuracy": 0.6}
  saved = {"category": "bottle", "step": 3, "has_masks": False, "image_auroc": 0.8,
           "f1_threshold": 0.45, "validation_threshold": at}
  thresholds = {"method": "fpr", "image_threshold": 0.5, "pixel_threshold": 0.4,
                "validation": {"num_images": 21, "num_synthetic_anomalous": 20,
                               "synthetic_image_auroc": 0.937, "synthetic_image": {
                                   "threshold": 0.5, "recall": 0.96, "fpr": 0.05}}}
  figures = {}
  save = report._save_figure  # pylint: disable=protected-access

  def keep(fig, path):
    figures[path.name] = fig
    return save(fig, path)

  monkeypatch.setattr(report, "_save_figure", keep)
  path = report.write_report(tmp_path, saved, labels, types, names, scores,
                             config={"eval": {"image_score": "p99", "mean_filter_size": 21}},
                             thresholds=thresholds)
  text = path.read_text()
  page = _parse(path)
  cells = {k: float(v) for k, v, _ in page.cells["validation-threshold"]}
  assert cells == pytest.approx(at)
  synthetic = {k: float(v) for k, v, _ in page.cells["synthetic"]}
  assert synthetic["synthetic_image_auroc"] == 0.937
  assert synthetic["synthetic_image_recall"] == 0.96
  assert text.index('id="metrics"') < text.index('id="validation-threshold"') < \
      text.index('id="synthetic"')
  assert "not on real defects" in text and "99th percentile of the anomaly map" in text
  assert "validation-split threshold (fpr)" in text
  ax = figures["scores.png"].axes[0]
  assert ax.get_xlabel() == "image score (99th percentile of the anomaly map)"
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "validation-split threshold (fpr) 0.5" in legend
  assert not any("F1-max" in t for t in legend)
  # Without a validation split: the test-split F1-max threshold, the paper's score.
  figures.clear()
  report.write_report(tmp_path / "f1", {**saved, "validation_threshold": None}, labels, types,
                      names, scores)
  ax = figures["scores.png"].axes[0]
  assert ax.get_xlabel() == "image score (max of the 21x21 mean-filtered anomaly map)"
  assert "test-split F1-max threshold 0.45" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_index_links_each_category_report(report_dir, tmp_path):
  out, path, _ = report_dir
  saved = json.loads((out / "metrics.json").read_text())
  index = report.write_index(tmp_path / "report.html",
                             {"bottle": (saved, path), "screw": (saved, tmp_path / "none.html")})
  page = _parse(index)
  assert [(tmp_path / unquote(l)).resolve() for l in page.links] == [path.resolve()]
  cells = {(k, v) for k, v, _ in page.cells["summary"]}
  assert ("image_auroc", repr(float(saved["image_auroc"]))) in cells


def test_roc_curve_matches_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 300)
  scores = np.round(rng.random(300) + 0.3 * labels, 2)  # Ties included.
  fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
  ref_fpr, ref_tpr, ref_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
  np.testing.assert_allclose(fpr, ref_fpr)
  np.testing.assert_allclose(tpr, ref_tpr)
  np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])
  assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.image_auroc(labels, scores))
  assert metrics.roc_curve(np.zeros(4), np.arange(4.0)) is None


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
  _, path, _ = report_dir
  shot = tmp_path / "report.png"
  done = subprocess.run(
      ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
       f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
       "--window-size=1280,2000", path.as_uri()],
      capture_output=True, text=True, timeout=180)
  assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
  with Image.open(shot) as im:
    pixels = np.asarray(im.convert("RGB"), np.float64)
  assert pixels.shape[:2] == (2000, 1280)
  # Not blank: text, tables and plots cover a good part of the page, in several colours.
  not_white = np.any(pixels < 235, axis=-1).mean()
  assert not_white > 0.05, not_white
  assert pixels.std() > 20
  colourful = (pixels.max(axis=-1) - pixels.min(axis=-1) > 60).mean()  # Curves, overlays.
  assert colourful > 0.002, colourful
