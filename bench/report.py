"""What the HTML report adds to an evaluation: report.write_report vs metrics.evaluate_category.

Both run in one process on the same inputs, in alternation (rotating which goes first), on a
synthetic test split shaped like MVTec AD bottle (83 images: 20 good, 3 defect types of ~21,
one rectangular defect each, maps of noise plus a blob where the defect is). The report's
work is its own ROC and PRO curves (one sort of all pixels each), four matplotlib plots and
the page; the overlays are written by the evaluation either way and are not timed here.
Seconds per call, median of --repeats (minimum in brackets), and the report's time as a
fraction of the metrics' time.

  python bench/report.py --sizes 64,256 --repeats 3
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from draem_jax.evaluation import metrics
from draem_jax.evaluation import report


def synthetic_split(size: int, seed: int = 0):
  """(labels, defect_types, file_names, scores, maps, gt) of an 83-image bottle-like split."""
  rng = np.random.default_rng(seed)
  types = ["good"] * 20 + ["broken_large"] * 20 + ["broken_small"] * 22 + ["contamination"] * 21
  labels = np.asarray([int(t != "good") for t in types])
  gt = np.zeros((len(types), size, size), bool)
  maps = rng.uniform(0.0, 0.3, gt.shape).astype(np.float32)
  for i in np.flatnonzero(labels):
    h, w = rng.integers(size // 16, size // 4, 2)
    y, x = rng.integers(0, size - h), rng.integers(0, size - w)
    gt[i, y:y + h, x:x + w] = True
    maps[i, y:y + h, x:x + w] += rng.uniform(0.1, 0.7)
  maps = np.clip(maps, 0.0, 1.0)
  scores = metrics.mean_filter_max(maps, 21)
  names = [f"{i:03d}.png" for i in range(len(types))]
  return labels, types, names, scores, maps, gt


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="64,256")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"{platform.machine()} {platform.processor() or ''}, Python {platform.python_version()}")
  print("| maps | metrics (s) | report (s) | **report / metrics** |")
  print("|---|---:|---:|---:|")
  for size in (int(s) for s in args.sizes.split(",")):
    labels, types, names, scores, maps, gt = synthetic_split(size)
    times = {"metrics": [], "report": []}
    with tempfile.TemporaryDirectory() as tmp:
      result = metrics.json_safe(metrics.evaluate_category(labels, scores, gt, maps, types))
      result.update(category="bottle", step=0, protocol="paper", has_masks=True)

      def run_metrics():
        metrics.evaluate_category(labels, scores, gt, maps, types)

      def run_report():
        report.write_report(tmp, result, labels, types, names, scores, maps, gt)

      run_report()  # Warm-up: matplotlib's font cache and first-use imports.
      jobs = [("metrics", run_metrics), ("report", run_report)]
      for r in range(args.repeats):
        for name, job in (jobs if r % 2 == 0 else jobs[::-1]):
          start = time.perf_counter()
          job()
          times[name].append(time.perf_counter() - start)
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: float(np.min(v)) for k, v in times.items()}
    print(f"| 83 x {size}² | {med['metrics']:.2f} [{low['metrics']:.2f}] | "
          f"{med['report']:.2f} [{low['report']:.2f}] | **{med['report'] / med['metrics']:.2f}** |")


if __name__ == "__main__":
  main()
