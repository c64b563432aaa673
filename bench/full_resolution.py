"""Pixel metrics at each test image's original resolution, for runs that shrink differently.

  python bench/full_resolution.py --run "plain s0=workdirs/pill_s0" \
      --run "antialiased s0=workdirs/pill_aa_s0" ...

The evaluator's pixel AUROC, pixel AP and AU-PRO compare maps with ground-truth masks resized
to the model's size and binarised (eval.protocol). How a mask is shrunk decides which pixels
count as defect: with `data.resize_antialias` a 64x64 mask pixel reads 1 only where its whole
footprint (4x4 input pixels for 256 -> 64, 14x14 for 900 -> 64) is defect, so thin cracks and
scratches lose most of their ground truth, and two runs that resize differently are scored
against different masks. Here every run is scored against the same masks: the original ones,
with each anomaly map taken back (bilinear) to its image's own size, as MVTec AD's evaluation
script does (`eval.aupro_full_resolution` computes this AU-PRO in evaluate.py). Newest
checkpoint of each run, its own evaluation settings otherwise. Prints one Markdown row per run
and the mean of runs whose names differ only in a trailing " s<seed>". Run it from the folder
the runs were trained from when their config names relative data paths.
"""

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from draem_jax import data as data_lib
from draem_jax import inference
from draem_jax.evaluation import evaluator
from draem_jax.evaluation import metrics as metrics_lib
# pylint: enable=wrong-import-position

COLUMNS = ("pixel AUROC", "pixel AP", "AU-PRO")


def full_resolution_metrics(workdir: Path) -> dict[str, float]:
  """{"model: <metric>": at the model's size, "full: <metric>": at the original size, "step"}."""
  run = inference.load_run(workdir)
  eval_ds = data_lib.make_eval_dataset(run.config, process_index=0, process_count=1,
                                       num_devices=run.mesh.devices.size)
  if not eval_ds.has_masks:
    sys.exit(f"{workdir}: its test split has no ground-truth masks; pixel metrics need them.")
  ev = run.config.eval
  predict = evaluator.jit_predict_fn(evaluator.predict_fn_for(run.model, ev), run.mesh)
  pred = evaluator.predict_split(predict, run.variables, eval_ds, run.mesh)
  small_gt = metrics_lib.gt_masks(pred["masks"], ev.protocol)
  full = evaluator.at_original_size(eval_ds, pred["maps"])
  if full is None:
    sys.exit(f"{workdir}: its test images have several sizes; pooled pixel metrics need one.")
  full_gt, full_maps = full
  out = {"step": run.step}
  for where, gt, maps in (("model", small_gt, pred["maps"]), ("full", full_gt, full_maps)):
    out[f"{where}: pixel AUROC"] = metrics_lib.pixel_auroc(gt, maps)
    out[f"{where}: pixel AP"] = metrics_lib.pixel_ap(gt, maps)
    out[f"{where}: AU-PRO"] = metrics_lib.aupro(gt, maps, ev.aupro_fpr_limit)
  out["model: defect pixels"] = float(small_gt.mean())
  out["full: defect pixels"] = float(full_gt.mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True,
                      help='"name=workdir" (repeat); names ending " s<seed>" are averaged')
  args = parser.parse_args()
  rows = {}
  for spec in args.run:
    name, sep, workdir = spec.partition("=")
    if not sep or not name or not workdir:
      sys.exit(f'--run must be "name=workdir", got {spec!r}.')
    rows[name] = full_resolution_metrics(Path(workdir))
  keys = ["defect pixels"] + list(COLUMNS)
  header = [f"model size: {k}" for k in keys] + [f"original size: {k}" for k in keys]
  print("| run | step | " + " | ".join(header) + " |")
  print("|---|---:|" + "---:|" * len(header))
  groups: dict[str, list[dict]] = {}
  for name, row in rows.items():
    values = [row[f"{where}: {k}"] for where in ("model", "full") for k in keys]
    print(f"| {name} | {row['step']} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |")
    groups.setdefault(re.sub(r" s\d+$", "", name), []).append(values)
  for name, group in groups.items():
    if len(group) > 1:
      mean = np.mean(group, axis=0)
      print(f"| **{name}, mean of {len(group)}** | | "
            + " | ".join(f"**{100 * v:.1f}**" for v in mean) + " |")


if __name__ == "__main__":
  main()
