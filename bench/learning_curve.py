"""Prints a run's learning curve as a Markdown table, from its metrics.jsonl.

  python bench/learning_curve.py --workdir workdirs/bottle_cpu

Rows: every evaluation logged during training (train.eval_every_steps) and at the end, with
the training loss averaged over the preceding logging window and the wall time since the run's
first logged step.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draem_jax.training import metric_writers  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  records = metric_writers.read_metrics(args.workdir)
  if not records:
    sys.exit(f"no metrics.jsonl in {args.workdir}")
  start = records[0]["time"]
  last_loss = {}
  print("| step | minutes | train loss | image AUROC | pixel AUROC | pixel AP | AU-PRO |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in records:
    if "loss" in r:
      last_loss = r
    if "eval/image_auroc" in r:
      cells = [r.get(f"eval/{k}") for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")]
      cells = ["n/a" if c is None else f"{100 * c:.1f}" for c in cells]
      loss = last_loss.get("loss")
      print(f"| {r['step']} | {(r['time'] - start) / 60:.1f} | "
            f"{'n/a' if loss is None else f'{loss:.3f}'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
