"""The evaluation report: one self-contained HTML page per evaluation, and an index per run.

`write_report` turns what an evaluation measured (the metrics.json dict, per-image labels,
defect types, scores, and the anomaly maps with their ground truth) into
`<out_dir>/report.html` and four plots beside it in `report_files/`:

- the metrics table next to the paper's numbers, overall and per defect type, rendered from
  whatever numeric keys the metrics dict holds (new metrics appear without changes here), with
  the number of images each defect type loses at the decision threshold;
- with a validation split: the test split's metrics at its thresholds (real defects) first,
  then the validation split's own figures, labelled as measured on synthetic anomalies;
- ROC curves (image level per defect type, pixel level), the PRO curve up to the AU-PRO's FPR
  limit, and a histogram of image scores for good vs each defect type with the threshold;
- the overlay gallery (the PNGs evaluation wrote to `overlays/<defect>/<name>.png`), grouped
  by defect type, misclassified images first, each with its score;
- the run's config and checkpoint step.

The page has no script and loads nothing from the network; it links only files that exist.
Plots are drawn by matplotlib's Agg backend on `Figure` objects (no pyplot global state) and
every file is written atomically through `draem_jax.fileio`. `write_index` writes the page
of an `all` run that links each category's report.
"""

from collections.abc import Mapping, Sequence
import html
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from draem_jax import fileio
from draem_jax.evaluation import metrics as metrics_lib

REPORT_FILE = "report.html"
FILES_DIR = "report_files"
OVERLAY_DIR = "overlays"  # Where evaluation writes overlays/<defect>/<stem>.png.
MAX_CURVE_POINTS = 2000  # Pixel curves have one point per distinct score (millions): thinned.
# Keys of the metrics dict that describe the run rather than measure it.
_META_KEYS = ("category", "step", "protocol", "has_masks", "num_test_images")
_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
           "image_ap": "image AP", "aupro": "AU-PRO", "aupro_full_resolution":
           "AU-PRO (full resolution)", "f1_max": "image F1-max", "f1_threshold":
           "image F1-max threshold", "pixel_f1_max": "pixel F1-max", "pixel_f1_threshold":
           "pixel F1-max threshold"}
# Rows first in this order; any other numeric key follows alphabetically.
_ORDER = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro",
          "aupro_full_resolution", "f1_max", "f1_threshold", "pixel_f1_max",
          "pixel_f1_threshold")
_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
.bad { color: #b00020; font-weight: bold; }
.plots img { width: 32%; margin: 0 1% 1em 0; vertical-align: top; }
.plots img.wide { width: 97%; max-width: 1200px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 588px; border: 3px solid #ccc; padding: 4px; }
figure.miss { border-color: #b00020; }
figure img { width: 100%; display: block; }
figcaption { font-size: 0.9em; padding-top: 3px; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


# ------------------------------------------------------------------------------------------
# Numbers.


def _is_number(value: Any) -> bool:
  return (value is None or isinstance(value, (int, float, np.integer, np.floating))) and \
      not isinstance(value, bool)


def metric_keys(metrics: Mapping[str, Any]) -> list[str]:
  """The keys of `metrics` that hold measured numbers (or None), in display order."""
  keys = [k for k, v in metrics.items() if k not in _META_KEYS and _is_number(v)]
  known = [k for k in _ORDER if k in keys]
  return known + sorted(k for k in keys if k not in _ORDER)


def label(key: str) -> str:
  """A metric key as people read it ("pixel_ap" -> "pixel AP")."""
  return _LABELS.get(key, key.replace("_", " "))


def format_value(key: str, value: float | None) -> str:
  """Fractions in [0, 1] as percent with one decimal; thresholds and other numbers as %.4g."""
  if value is None or not math.isfinite(float(value)):
    return "n/a"
  value = float(value)
  if "threshold" in key or not 0.0 <= value <= 1.0:
    return f"{value:.4g}"
  return f"{100.0 * value:.1f}"


def decisions(labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
  """(N,) str: "TP", "FN" (anomalous, missed), "FP" (good, flagged) or "TN" at `threshold`."""
  labels = np.asarray(labels).astype(bool)
  flagged = np.asarray(scores) >= threshold
  return np.where(labels, np.where(flagged, "TP", "FN"), np.where(flagged, "FP", "TN"))


def gallery_order(labels: np.ndarray, defect_types: Sequence[str], scores: np.ndarray,
                  threshold: float) -> list[tuple[str, list[int]]]:
  """Image indices grouped by defect type, the worst cases first.

  Groups with more misclassified images come first (ties by name). Inside a group the
  misclassified images come first, then the others; each part is ordered from the most to the
  least wrong score: anomalous images by ascending score, good images by descending score.

  Returns:
    [(defect_type, [index, ...]), ...].
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  kinds = decisions(labels, scores, threshold)
  wrong = (kinds == "FN") | (kinds == "FP")
  types = np.asarray([str(t) for t in defect_types])
  groups = []
  for defect in sorted(set(types.tolist())):
    members = np.flatnonzero(types == defect)
    # Lower key = shown earlier: misclassified first, then by how far on the wrong side.
    wrongness = np.where(labels[members], scores[members], -scores[members])
    order = np.lexsort((members, wrongness, ~wrong[members]))
    groups.append((defect, [int(i) for i in members[order]], int(wrong[members].sum())))
  groups.sort(key=lambda g: (-g[2], g[0]))
  return [(defect, indices) for defect, indices, _ in groups]


def _thin(x: np.ndarray, y: np.ndarray, limit: int = MAX_CURVE_POINTS):
  """At most `limit` points of a monotone curve, first and last kept (for plotting only)."""
  if x.size <= limit:
    return x, y
  keep = np.unique(np.linspace(0, x.size - 1, limit).round().astype(np.int64))
  return x[keep], y[keep]


# What the image score is, per eval.image_score ({k}: eval.mean_filter_size).
_SCORE_NAMES = {"paper": "max of the {k}x{k} mean-filtered anomaly map",
                "minus_median": "max minus median of the {k}x{k} mean-filtered anomaly map",
                "p99": "99th percentile of the anomaly map"}


def score_name(config: Mapping[str, Any] | None) -> str:
  """The run's image score in words, from its config dict (eval.image_score, default paper)."""
  ev = (config or {}).get("eval", {}) or {}
  kind = ev.get("image_score", "paper")
  return _SCORE_NAMES.get(kind, str(kind)).format(k=ev.get("mean_filter_size", 21))


def threshold_name(metrics: Mapping[str, Any], threshold: float,
                   thresholds: Mapping[str, Any] | None = None) -> str:
  """The kind of the image decision threshold: the validation split's (its method), the
  test-split F1-max, or neither (given by hand)."""
  if thresholds is not None and threshold == thresholds.get("image_threshold"):
    return f"validation-split threshold ({thresholds.get('method', 'f1')})"
  if metrics.get("f1_threshold") is not None and threshold == metrics["f1_threshold"]:
    return "test-split F1-max threshold"
  return "decision threshold"


# ------------------------------------------------------------------------------------------
# Plots.


def _save_figure(fig: Figure, path: Path) -> Path:
  return fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100,
                                                         bbox_inches="tight"))


def _roc_axes(ax, title: str):
  ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
         ylabel="true positive rate", title=title)
  ax.grid(alpha=0.3)


def _curve_figure():
  """(figure, axes) of one curve plot; the three curve plots share the size."""
  fig = Figure(figsize=(5, 4.2))
  return fig, fig.add_subplot()


def plot_image_roc(path: Path, labels: np.ndarray, defect_types: Sequence[str],
                   scores: np.ndarray) -> Path | None:
  """Image ROC of all anomalous images, and of each defect type against the good images."""
  labels = np.asarray(labels).astype(bool)
  types = np.asarray([str(t) for t in defect_types])
  curve = metrics_lib.roc_curve(labels, scores)
  if curve is None:
    return None
  fig, ax = _curve_figure()
  _roc_axes(ax, "image ROC")
  for defect in sorted(set(types[labels].tolist())):
    keep = (types == defect) | ~labels
    sub = metrics_lib.roc_curve(labels[keep], scores[keep])
    auc = metrics_lib.image_auroc(labels[keep], scores[keep])
    ax.plot(sub[0], sub[1], lw=1.2, alpha=0.8,
            label=f"{defect} ({100 * auc:.1f})")
  auc = metrics_lib.image_auroc(labels, scores)
  ax.plot(curve[0], curve[1], color="black", lw=2.2, label=f"all ({100 * auc:.1f})")
  ax.legend(loc="lower right", fontsize=9, title="AUROC (%)", title_fontsize=9)
  return _save_figure(fig, path)


def plot_pixel_roc(path: Path, gt: np.ndarray, maps: np.ndarray,
                   pixel_auroc: float | None) -> Path | None:
  """Pixel ROC over all pixels of the category pooled (None without anomalous pixels)."""
  roc = metrics_lib.roc_curve(gt, maps)
  if roc is None:
    return None
  fig, ax = _curve_figure()
  _roc_axes(ax, "pixel ROC")
  fpr, tpr = _thin(roc[0], roc[1])
  auc = "n/a" if pixel_auroc is None else f"{100 * pixel_auroc:.1f}%"
  ax.plot(fpr, tpr, color="black", lw=2, label=f"AUROC {auc}")
  ax.legend(loc="lower right")
  return _save_figure(fig, path)


def plot_pro(path: Path, gt: np.ndarray, maps: np.ndarray, fpr_limit: float,
             aupro: float | None) -> Path | None:
  """The PRO curve up to `fpr_limit`, the area AU-PRO measures shaded (None without regions)."""
  pro = metrics_lib.aupro_curve(gt, maps)
  if pro is None:
    return None
  fig, ax = _curve_figure()
  fpr, per_region = pro[0], pro[1]
  inside = fpr <= fpr_limit
  # The curve up to the limit, interpolated at the limit as AU-PRO integrates it.
  end = float(np.interp(fpr_limit, fpr, per_region))
  x, y = _thin(np.append(fpr[inside], fpr_limit), np.append(per_region[inside], end))
  area = "n/a" if aupro is None else f"{100 * aupro:.1f}%"
  ax.plot(x, y, color="black", lw=2, label=f"AU-PRO {area} (area / {fpr_limit:g})")
  ax.fill_between(x, 0, y, color="#444", alpha=0.12)
  ax.set(xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false positive rate (normal pixels)",
         ylabel="per-region overlap", title=f"PRO curve up to FPR {fpr_limit:g}")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  return _save_figure(fig, path)


def plot_score_histogram(path: Path, labels: np.ndarray, defect_types: Sequence[str],
                         scores: np.ndarray, threshold: float | None,
                         threshold_label: str = "decision threshold",
                         score_label: str = score_name(None)) -> Path:
  """Image scores of good images and of each defect type on shared bins, threshold marked.

  `threshold_label` names the threshold's kind (`threshold_name`), `score_label` the image
  score (`score_name`)."""
  types = np.asarray([str(t) for t in defect_types])
  scores = np.asarray(scores, np.float64)
  edges = np.histogram_bin_edges(scores, bins=min(40, max(10, scores.size // 3)))
  fig = Figure(figsize=(12, 4))
  ax = fig.add_subplot()
  good = ~np.asarray(labels).astype(bool)
  ax.hist(scores[good], bins=edges, color="#2e7d32", alpha=0.45, label=f"good ({good.sum()})")
  for defect in sorted(set(types[~good].tolist())):
    sel = (types == defect) & ~good
    ax.hist(scores[sel], bins=edges, histtype="step", lw=2, label=f"{defect} ({sel.sum()})")
  if threshold is not None and math.isfinite(threshold):
    ax.axvline(threshold, color="#b00020", lw=2, ls="--",
               label=f"{threshold_label} {threshold:.4g}")
  ax.set(xlabel=f"image score ({score_label})", ylabel="images",
         title="image scores: good vs each defect type")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9)
  return _save_figure(fig, path)


# ------------------------------------------------------------------------------------------
# HTML.


def _e(value: Any) -> str:
  return html.escape(str(value), quote=True)


def _href(path: Path, base: Path) -> str:
  """A relative URL from the folder `base` to `path` (forward slashes, escaped)."""
  rel = os.path.relpath(path, base).replace(os.sep, "/")
  return _e("/".join(quote(p) for p in rel.split("/")))


def _cell(key: str, value: Any) -> str:
  raw = "" if value is None else repr(float(value))
  return f'<td data-key="{_e(key)}" data-value="{_e(raw)}">{_e(format_value(key, value))}</td>'


def metrics_table(category: str, metrics: Mapping[str, Any]) -> str:
  """HTML table: every measured key of `metrics` | ours | paper | ours - paper."""
  paper = metrics_lib.PAPER_RESULTS.get(category, {})
  rows = []
  for key in metric_keys(metrics):
    value = metrics[key]
    ours = None if value is None else float(value)
    published = paper.get(key)
    paper_cell = "n/a" if published is None else f"{published:.1f}"
    diff = "n/a"
    if published is not None and ours is not None and math.isfinite(ours):
      diff = f"{100.0 * ours - published:+.1f}"
    rows.append(f"<tr><th>{_e(label(key))}</th>{_cell(key, ours)}<td>{_e(paper_cell)}</td>"
                f"<td>{_e(diff)}</td></tr>")
  return ("<table id=\"metrics\"><thead><tr><th>metric</th><th>ours (%)</th><th>paper (%)</th>"
          "<th>ours - paper</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def defect_table(metrics: Mapping[str, Any], kinds: np.ndarray,
                 defect_types: Sequence[str]) -> str:
  """HTML table per defect type: images lost at the threshold, then every measured key."""
  per_type = metrics.get("per_defect_type") or {}
  keys = []
  for entry in per_type.values():
    keys += [k for k in metric_keys(entry) if k not in keys]
  keys = [k for k in _ORDER if k in keys] + sorted(k for k in keys if k not in _ORDER)
  types = np.asarray([str(t) for t in defect_types])
  head = "".join(f"<th>{_e(label(k))}</th>" for k in keys)
  rows = []
  for defect in sorted(set(types.tolist())):
    sel = types == defect
    wrong = int(np.isin(kinds[sel], ("FN", "FP")).sum())
    what = "flagged (FP)" if defect == "good" else "missed (FN)"
    css = ' class="bad"' if wrong else ""
    entry = per_type.get(defect, {})
    cells = "".join(_cell(k, entry.get(k)) if defect in per_type else "<td></td>"
                    for k in keys)
    rows.append(f'<tr data-defect="{_e(defect)}"><td>{_e(defect)}</td><td>{int(sel.sum())}</td>'
                f"<td{css}>{wrong} {what}</td>{cells}</tr>")
  return ("<table id=\"per-defect\"><thead><tr><th>defect type</th><th>images</th>"
          f"<th>at threshold</th>{head}</tr></thead><tbody>" + "".join(rows) +
          "</tbody></table>")


def gallery(out_dir: Path, labels: np.ndarray, defect_types: Sequence[str],
            file_names: Sequence[str], scores: np.ndarray, threshold: float) -> str:
  """HTML sections of overlays per defect type, worst first (see `gallery_order`)."""
  kinds = decisions(labels, scores, threshold)
  parts = []
  for defect, indices in gallery_order(labels, defect_types, scores, threshold):
    wrong = sum(kinds[i] in ("FN", "FP") for i in indices)
    parts.append(f'<section class="group" data-defect="{_e(defect)}"><h3>{_e(defect)}: '
                 f"{len(indices)} images, {wrong} misclassified</h3><div class=\"gallery\">")
    for i in indices:
      name = str(file_names[i])
      overlay = out_dir / OVERLAY_DIR / defect / f"{Path(name).stem}.png"
      miss = kinds[i] in ("FN", "FP")
      kind = f'<span class="bad">{kinds[i]}</span>' if miss else str(kinds[i])
      caption = f"{_e(name)} &#183; score {float(scores[i]):.4f} &#183; {kind}"
      picture = ""
      if overlay.is_file():
        link = _href(overlay, out_dir)
        picture = f'<a href="{link}"><img src="{link}" alt="{_e(name)}" loading="lazy" /></a>'
      parts.append(f'<figure class="{"miss" if miss else "hit"}" data-index="{i}" '
                   f'data-kind="{kinds[i]}" data-score="{float(scores[i])!r}">{picture}'
                   f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</div></section>")
  return "".join(parts)


def _key_value_table(table_id: str, rows: Mapping[str, Any]) -> str:
  body = "".join(f"<tr><th>{_e(label(k))}</th>{_cell(k, v)}</tr>" for k, v in rows.items()
                 if v is not None and _is_number(v))
  return (f'<table id="{_e(table_id)}"><thead><tr><th>metric</th><th>value (%)</th></tr>'
          f"</thead><tbody>{body}</tbody></table>")


# Numbers of thresholds.json's "validation" block, format 2 names (format 1 had no prefix).
_SYNTHETIC_KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_ap")
SYNTHETIC_NOTE = ("Measured on synthetic anomalies (the training simulator applied to held-out "
                  "good images), not on real defects: these figures do not estimate the "
                  "recall or AUROC on real defects, which can be far lower.")


def validation_sections(metrics: Mapping[str, Any],
                        thresholds: Mapping[str, Any] | None) -> str:
  """HTML: the test split's metrics at the validation split's thresholds (real defects), then
  the validation split's own figures (synthetic anomalies), each labelled as what it is."""
  parts = []
  at = metrics.get("validation_threshold")
  if isinstance(at, Mapping) and at:
    parts.append(
        "<h2>Test split at the validation split's thresholds</h2><p>Real defects of the "
        "labelled test split, decided by the thresholds chosen on the validation split "
        "without test labels (what a deployment that never saw a defect would get).</p>"
        + _key_value_table("validation-threshold", at))
  val = (thresholds or {}).get("validation")
  if isinstance(val, Mapping) and val:
    rows = {f"synthetic_{k}": val.get(f"synthetic_{k}", val.get(k)) for k in _SYNTHETIC_KEYS}
    # Precision, recall, ... at the image threshold ("threshold" itself shown as a score).
    at_threshold = val.get("synthetic_image", val.get("image")) or {}
    rows.update({f"synthetic_image_{k}": v for k, v in at_threshold.items()})
    note = val.get("note", SYNTHETIC_NOTE)
    parts.append(
        "<h2>Validation split (synthetic anomalies)</h2>"
        f"<p class=\"bad\">{_e(note)}</p><p>{_e(val.get('num_images', '?'))} held-out good "
        f"images, clean and with a synthetic anomaly "
        f"({_e(val.get('num_synthetic_anomalous', '?'))} anomalous); precision, recall, F1, "
        "FPR and accuracy at the chosen image threshold.</p>"
        + _key_value_table("synthetic", rows))
  return "".join(parts)


def _page(title: str, body: str) -> str:
  # Well-formed XML as well as HTML5 (self-closed void tags, numeric entities only), so that
  # strict parsers read it too.
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />"
          f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


def render_report(out_dir: Path, metrics: Mapping[str, Any], labels: np.ndarray,
                  defect_types: Sequence[str], file_names: Sequence[str], scores: np.ndarray,
                  threshold: float, plots: Mapping[str, Path | None],
                  config: Mapping[str, Any] | None = None,
                  thresholds: Mapping[str, Any] | None = None) -> str:
  """The report page as a string (see the module docstring); links are relative to out_dir.

  `thresholds`: the validation split's thresholds.json content, if the run has one."""
  category = str(metrics.get("category", ""))
  kinds = decisions(labels, scores, threshold)
  fn, fp = int((kinds == "FN").sum()), int((kinds == "FP").sum())
  meta = (f"checkpoint step {_e(metrics.get('step', '?'))} &#183; protocol "
          f"{_e(metrics.get('protocol', '?'))} &#183; {len(scores)} test images &#183; "
          f"decision threshold {threshold:.4g}: "
          f"<span class=\"bad\">{fn} missed (FN), {fp} false alarms (FP)</span>")
  kind = threshold_name(metrics, threshold, thresholds)
  meta += f"<br />Image score: {_e(score_name(config))}."
  if kind.startswith("validation"):
    meta += (f"<br />The threshold is the {_e(kind)}, chosen on held-out good images and "
             "their synthetic anomalies without test labels: an image is called anomalous "
             "when its score is at least that.")
  elif kind.startswith("test-split"):
    meta += ("<br />The threshold is the image score that maximises F1 over the test split "
             "(image F1-max): an image is called anomalous when its score is at least that.")
  plot_html = "".join(
      f'<a href="{_href(p, out_dir)}"><img src="{_href(p, out_dir)}" alt="{_e(name)}" '
      f'class="{"wide" if name == "score histogram" else "plot"}" /></a>'
      for name, p in plots.items() if p is not None)
  if not metrics.get("has_masks", True):
    plot_html += "<p>No ground-truth masks: pixel ROC and PRO curve are not available.</p>"
  counts = metrics.get("counts")
  counts_html = ""
  if isinstance(counts, Mapping):
    counts_html = "<p>" + ", ".join(f"{_e(k.replace('_', ' '))}: {_e(v)}"
                                    for k, v in counts.items()) + "</p>"
  config_html = ""
  if config is not None:
    config_html = ("<h2>Config</h2><details><summary>the run's config.json</summary><pre>"
                   f"{_e(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>"
                   "</details>")
  body = (
      f"<h1>DRAEM evaluation: {_e(category)}</h1><p class=\"meta\">{meta}</p>"
      f"<h2>Metrics</h2>{metrics_table(category, metrics)}{counts_html}"
      f"{validation_sections(metrics, thresholds)}"
      "<h2>Per defect type</h2><p>Each defect type is measured on its images plus all good "
      "images; the paper publishes no per-defect-type numbers. \"at threshold\" counts the "
      "images on the wrong side of the decision threshold.</p>"
      f"{defect_table(metrics, kinds, defect_types)}"
      f"<h2>Curves and scores</h2><div class=\"plots\">{plot_html}</div>"
      "<h2>Overlays, worst first</h2><p>Grouped by defect type; misclassified images (red "
      "frame) first, each part from the most to the least wrong score. Each overlay: image | "
      "anomaly map | predicted mask | ground truth.</p>"
      f"{gallery(out_dir, labels, defect_types, file_names, scores, threshold)}"
      f"{config_html}")
  return _page(f"DRAEM {category} step {metrics.get('step', '')}", body)


def write_report(out_dir: str | os.PathLike, metrics: Mapping[str, Any], labels: np.ndarray,
                 defect_types: Sequence[str], file_names: Sequence[str], scores: np.ndarray,
                 maps: np.ndarray | None = None, gt: np.ndarray | None = None, *,
                 threshold: float | None = None, config: Mapping[str, Any] | None = None,
                 fpr_limit: float = 0.3, thresholds: Mapping[str, Any] | None = None) -> Path:
  """Writes `<out_dir>/report.html` and its plots in `<out_dir>/report_files/`.

  Args:
    out_dir: the evaluation folder (holds metrics.json and overlays/<defect>/<stem>.png).
    metrics: the metrics.json dict (json-safe: None where undefined).
    labels: (N,) 0/1, 1 = anomalous.
    defect_types, file_names: (N,) str, in the order of `labels`.
    scores: (N,) image scores.
    maps: (N, H, W) anomaly maps, or None (no pixel plots).
    gt: (N, H, W) bool ground truth of the protocol, or None (no masks).
    threshold: the image decision threshold (default: that of `thresholds`, else
      metrics["f1_threshold"], else 0.5).
    config: the run's config as a dict, shown on the page (its eval.image_score names the
      score).
    fpr_limit: the AU-PRO integration limit (config eval.aupro_fpr_limit).
    thresholds: the validation split's thresholds.json content (its synthetic-split figures
      are shown after the test split's, labelled as such), or None.

  Returns:
    The path of report.html.
  """
  out_dir = Path(out_dir)
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(np.int32)
  if threshold is None and thresholds is not None:
    threshold = thresholds.get("image_threshold")
  if threshold is None:
    threshold = metrics.get("f1_threshold")
  if threshold is None or not math.isfinite(threshold):
    threshold = 0.5
  files = out_dir / FILES_DIR
  plots = {"image ROC": plot_image_roc(files / "image_roc.png", labels, defect_types, scores)}
  if maps is not None and gt is not None:
    gt, maps = np.asarray(gt, bool), np.asarray(maps)
    plots["pixel ROC"] = plot_pixel_roc(files / "pixel_roc.png", gt, maps,
                                        metrics.get("pixel_auroc"))
    plots["PRO curve"] = plot_pro(files / "pro.png", gt, maps, fpr_limit, metrics.get("aupro"))
  plots["score histogram"] = plot_score_histogram(
      files / "scores.png", labels, defect_types, scores, threshold,
      threshold_name(metrics, threshold, thresholds), score_name(config))
  page = render_report(out_dir, metrics, labels, defect_types, file_names, scores, threshold,
                       plots, config, thresholds)
  return fileio.atomic_write_text(out_dir / REPORT_FILE, page)


def write_index(path: str | os.PathLike, reports: Mapping[str, tuple[Mapping[str, Any], Path]],
                title: str = "DRAEM evaluation") -> Path:
  """Writes the page of a multi-category run: a summary table linking each category's report.

  Args:
    path: the page to write (e.g. `<workdir>/report.html`).
    reports: {category: (its metrics dict, the path of its report.html)}.
    title: the page's heading.

  Returns:
    `path` as a Path.
  """
  path = Path(path)
  keys = []
  for metrics, _ in reports.values():
    keys += [k for k in metric_keys(metrics) if k not in keys and "threshold" not in k]
  keys = [k for k in _ORDER if k in keys] + sorted(k for k in keys if k not in _ORDER)
  head = "".join(f"<th>{_e(label(k))}</th>" for k in keys)
  rows = []
  for category, (metrics, report_path) in reports.items():
    paper = metrics_lib.PAPER_RESULTS.get(category, {})
    cells = []
    for k in keys:
      cell = _cell(k, metrics.get(k))
      if k in paper:  # The published number beside ours.
        cell = cell.replace("</td>", f" <small>(paper {paper[k]:.1f})</small></td>")
      cells.append(cell)
    link = (f'<a href="{_href(Path(report_path), path.parent)}">{_e(category)}</a>'
            if Path(report_path).is_file() else _e(category))
    rows.append(f"<tr><td>{link}</td><td>{_e(metrics.get('step', ''))}</td>{''.join(cells)}"
                "</tr>")
  body = (f"<h1>{_e(title)}</h1><p class=\"meta\">Numbers in percent (thresholds as scores); "
          "each category name links its report.</p><table id=\"summary\"><thead><tr>"
          f"<th>category</th><th>step</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
          "</table>")
  return fileio.atomic_write_text(path, _page(title, body))
