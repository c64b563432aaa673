"""Robustness of a trained run to nuisance changes of its test images (draem_jax.simulation.perturb).

  python bench/robustness.py --workdir workdirs/bottle_cpu [--step N] [--out table.md]

For the unperturbed test split and each perturbation of `perturb.PERTURBATIONS` (applied to the
test images at the run's image size, i.e. to what the network sees): the false-positive rate on
the good images at the run's image threshold (the F1-max threshold of the unperturbed split, as
evaluate.py's f1_threshold), the mean score of the good images and the image AUROC. For each
image score:
  paper:     max of the 21 x 21 mean-filtered map (DRAEM's score, the default);
  minus-med: that max minus the median of the mean-filtered map (a rise of the whole map under
             a global change cancels);
  p99:       the 99th percentile of the map.
Each score's threshold is its own F1-max threshold on the unperturbed split.
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from draem_jax import data as data_lib
from draem_jax.evaluation import evaluator
from draem_jax import fileio
from draem_jax import inference
from draem_jax.evaluation import metrics as metrics_lib
from draem_jax.training import parallel
from draem_jax.simulation import perturb


def image_scores(maps: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """(N, H, W) anomaly maps -> {score name: (N,) scores} (see the module docstring)."""
  filtered = metrics_lib.mean_filter(maps, size)
  return {"paper": filtered.max(axis=(1, 2)),
          "minus-med": filtered.max(axis=(1, 2)) - np.median(filtered, axis=(1, 2)),
          "p99": np.percentile(maps, 99, axis=(1, 2))}


def predict_maps(predict, variables, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
  """(N, S, S, 3) uint8 -> (N, S, S) anomaly maps, in batches of `batch_size` (padded)."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    batch = jax.device_put(chunk, parallel.batch_sharded(mesh))
    maps, _ = predict(variables, batch)
    out.append(np.asarray(maps)[:n])
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default newest)")
  parser.add_argument("--out", default=None, help="also write the table to this file")
  args = parser.parse_args()

  run = inference.load_run(args.workdir, args.step)
  ev = run.config.eval
  eval_ds = data_lib.make_eval_dataset(run.config, num_devices=run.mesh.devices.size)
  predict = evaluator.jit_predict_fn(
      evaluator.make_predict_fn(run.model, ev.mean_filter_size), run.mesh)
  clean = evaluator.predict_split(predict, run.variables, eval_ds, run.mesh)
  labels = np.asarray(eval_ds.labels)
  good = labels == 0
  images = clean["images"]

  sets = {"none": clean["maps"]}
  for name in perturb.PERTURBATIONS:
    sets[name] = predict_maps(predict, run.variables, perturb.perturb_batch(images, name),
                              eval_ds.global_batch_size, run.mesh)

  scores = {name: image_scores(maps, ev.mean_filter_size) for name, maps in sets.items()}
  kinds = list(scores["none"])
  thresholds = {k: metrics_lib.f1_max(labels, scores["none"][k])[1] for k in kinds}

  lines = [f"{Path(args.workdir).name}, step {run.step}: {int(good.sum())} good and "
           f"{int((~good).sum())} defective test images at {images.shape[1]}x{images.shape[2]}; "
           "per score: FPR on good images at its unperturbed F1 threshold / mean good score / "
           "image AUROC", "",
           "| perturbation | " + " | ".join(f"{k}: FPR / good mean / AUROC" for k in kinds) + " |",
           "|---|" + "---:|" * len(kinds)]
  for name, by_kind in scores.items():
    cells = []
    for k in kinds:
      s = by_kind[k]
      fpr = float(np.mean(s[good] >= thresholds[k]))
      cells.append(f"{100 * fpr:.0f}% / {s[good].mean():.3f} / "
                   f"{100 * metrics_lib.image_auroc(labels, s):.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("thresholds: " + ", ".join(f"{k} {t:.4f}" for k, t in thresholds.items()))
  table = "\n".join(lines)
  print(table)
  if args.out:
    fileio.atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
  main()
