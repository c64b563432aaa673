"""Compares finished runs side by side: final metrics, per defect type, and wall time.

  python bench/side_by_side.py --run "64 whole s0=workdirs/pill64_s0" \
      --run "64 whole s1=workdirs/pill64_s1" --run "crops s0=workdirs/pill_crops_s0" ...

Reads each workdir's last evaluation (`eval/<step>/metrics.json`, written by train.py or
evaluate.py) and its `metrics.jsonl` (training wall time: first to last logged step). Prints
Markdown: one row per run (image AUROC, pixel AUROC, pixel AP, AU-PRO, minutes of training),
the mean of runs whose names differ only in a trailing " s<seed>", and the image AUROC of
every defect type (each type's anomalous images against all normal ones).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draem_jax.training import metric_writers  # pylint: disable=wrong-import-position

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")


def last_evaluation(workdir: Path) -> dict:
  """The metrics.json of the highest step under workdir/eval/ (the paper protocol's)."""
  steps = sorted((int(p.name), p) for p in (workdir / "eval").glob("*") if p.name.isdigit())
  for _, path in reversed(steps):
    if (path / "metrics.json").is_file():
      return json.loads((path / "metrics.json").read_text())
  raise SystemExit(f"{workdir}: no eval/<step>/metrics.json; run evaluate.py --workdir {workdir}")


def training_minutes(workdir: Path) -> float:
  """Minutes between the first and the last logged training step (evaluations included)."""
  times = [r["time"] for r in metric_writers.read_metrics(workdir) if "loss" in r]
  return (times[-1] - times[0]) / 60 if len(times) > 1 else float("nan")


def pct(value) -> str:
  return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True, metavar="NAME=WORKDIR",
                      help="a label and a finished run's workdir (repeat)")
  args = parser.parse_args()
  runs = []
  for spec in args.run:
    name, sep, workdir = spec.partition("=")
    if not sep:
      parser.error(f"--run {spec!r}: expected NAME=WORKDIR")
    runs.append((name, last_evaluation(Path(workdir)), training_minutes(Path(workdir))))

  print("| run | step | image AUROC | pixel AUROC | pixel AP | AU-PRO | training min |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  groups: dict[str, list[dict]] = {}
  for name, result, minutes in runs:
    print(f"| {name} | {result['step']} | " + " | ".join(pct(result.get(k)) for k in METRICS)
          + f" | {minutes:.1f} |")
    groups.setdefault(re.sub(r"\s+s\d+$", "", name), []).append(result)
  for group, results in groups.items():
    if len(results) > 1:
      means = [np.mean([r.get(k, np.nan) for r in results]) for k in METRICS]
      print(f"| **{group}, mean of {len(results)}** | | "
            + " | ".join(f"**{pct(m)}**" for m in means) + " | |")

  types = sorted({t for _, r, _ in runs for t in r.get("per_defect_type", {})})
  if types:
    print("\nImage AUROC per defect type:\n")
    print("| defect type | " + " | ".join(name for name, _, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for t in types:
      cells = [pct(r.get("per_defect_type", {}).get(t, {}).get("image_auroc")) for _, r, _ in runs]
      print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
