"""The image score's mean filter size, measured on finished runs without training again.

  python bench/score_filter.py --workdir workdirs/bottle_cpu --workdir workdirs/pill_cpu \
      --sizes 21,9,5,3,1

DRAEM's image score is the maximum of the k x k mean-filtered anomaly map (k = 21 at the
paper's 256x256). At 64x64 a 21x21 window covers a third of the map, so a small defect's
response is averaged with its normal surroundings. For each run (newest checkpoint, the run's
own evaluation settings otherwise, tiles included) this computes the test split's anomaly maps
once, then the paper's image score (max of the filtered map) and its AUROC overall and per
defect type for every k; pixel metrics do not depend on k. Run it
from the folder the runs were trained from when their config names relative data paths.
"""

import argparse
import sys
from pathlib import Path

import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from draem_jax import data as data_lib
from draem_jax import inference
from draem_jax.evaluation import evaluator
from draem_jax.evaluation import metrics as metrics_lib
# pylint: enable=wrong-import-position


def test_maps(workdir: Path) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
  """(run info, (N, H, W) maps, (N,) labels, (N,) defect types) of the run's test split."""
  run = inference.load_run(workdir)
  eval_ds = data_lib.make_eval_dataset(run.config, process_index=0, process_count=1,
                                       num_devices=run.mesh.devices.size)
  # The run's own maps (tiles included); k = 1 and the paper's score leave the maps as they
  # are, and the scores are recomputed below for every k.
  ev = ml_collections.ConfigDict(run.config.eval.to_dict())
  ev.mean_filter_size, ev.mean_filter_fraction, ev.image_score = 1, 0.0, "paper"
  predict = evaluator.jit_predict_fn(evaluator.predict_fn_for(run.model, ev), run.mesh)
  pred = evaluator.predict_split(predict, run.variables, eval_ds, run.mesh)
  info = {"step": run.step, "k": evaluator.filter_size_for(
      pred["maps"].shape[1:3], run.config.eval.mean_filter_size,
      float(run.config.eval.get("mean_filter_fraction", 0.0)))}
  return info, pred["maps"], np.asarray(eval_ds.labels, bool), list(eval_ds.defect_types)


def auroc_by_size(maps, labels, types, sizes) -> dict[int, dict[str, float]]:
  """{k: {"all": image AUROC, <defect type>: its images against all normal ones}}."""
  types = np.asarray(types)
  out = {}
  for k in sizes:
    scores = metrics_lib.mean_filter_max(maps, k)
    row = {"all": metrics_lib.image_auroc(labels, scores)}
    for defect in sorted(set(types[labels].tolist())):
      keep = (types == defect) | ~labels
      row[defect] = metrics_lib.image_auroc(labels[keep], scores[keep])
    out[k] = row
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", action="append", required=True,
                      help="a folder written by train.py (repeat for several runs)")
  parser.add_argument("--sizes", default="21,9,5,3,1", help="odd filter sizes k to compare")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",") if s]
  bad = [k for k in sizes if k < 1 or k % 2 == 0]
  if bad:
    sys.exit(f"--sizes must be positive odd integers; got {bad}.")
  for workdir in map(Path, args.workdir):
    info, maps, labels, types = test_maps(workdir)
    table = auroc_by_size(maps, labels, types, sizes)
    columns = list(table[sizes[0]])
    print(f"\n{workdir} (step {info['step']}, maps {maps.shape[1]}x{maps.shape[2]}, the run's "
          f"own k = {info['k']}): image AUROC by mean filter size k\n")
    print("| k | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for k in sizes:
      print(f"| {k} | " + " | ".join(f"{100 * table[k][c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
  main()
