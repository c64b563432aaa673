"""The paper's ablation study (its Table 3), texture-count curve (Figure 9) and the noise
between two seeds, at the CPU size on one MVTec AD category.

  python bench/ablation.py                          # every run, 1,800 steps as measured
  python bench/ablation.py --steps 300 --only draem,rect,color
  python bench/ablation.py --out bench/out/ablation --category bottle

Each run is configs/mvtec_cpu.py (seed 0) at 1,800 steps with the reference's resize, evaluated
every 300 (as the README's table was measured), with one switch changed (docs/experiments.md),
trained and evaluated in `<out>/runs/<name>`. After every run its metrics are appended to
`<out>/results.jsonl`, and the tables are rewritten to `<out>/ablation.md` and printed, so a
partial or interrupted bench keeps what it measured; a run already in results.jsonl with the
same number of steps is not trained again. Paths: --mvtec_root and --texture_root (default
$DRAEM_MVTEC_ROOT / $DRAEM_TEXTURE_ROOT, else ../shared/data beside the repository).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import mvtec_cpu  # pylint: disable=wrong-import-position
from draem_jax import fileio  # pylint: disable=wrong-import-position
from draem_jax.training import metric_writers  # pylint: disable=wrong-import-position

# name -> (the changed fields, the paper's Table 3 row: Det. / Loc. AUROC / Loc. AP, or None).
RUNS = {
    "draem": ({}, (98.0, 97.3, 68.4)),
    "disc_only": ({"model.variant": "disc_only"}, (93.9, 92.7, 62.5)),
    "recon_ae": ({"model.variant": "recon_ae"}, (83.9, 89.7, 47.5)),
    "color": ({"simulator.texture_source": "color"}, (96.2, 92.6, 56.5)),
    "rect": ({"simulator.mask_shape": "rectangles"}, (96.9, 96.8, 65.1)),
    "no_aug": ({"simulator.augment_textures": False, "simulator.random_opacity": False},
               (97.4, 94.5, 64.3)),
    "img_aug": ({"simulator.random_opacity": False}, (97.4, 95.0, 64.5)),
    "sspcab": ({"model.sspcab": True}, (98.9, 97.2, 69.9)),
    "textures_1": ({"data.max_textures": 1}, None),
    "textures_10": ({"data.max_textures": 10}, None),
    "textures_100": ({"data.max_textures": 100}, None),
    "draem_seed1": ({"train.seed": 1}, (98.0, 97.3, 68.4)),
}
TABLE3 = ("draem", "disc_only", "recon_ae", "color", "rect", "no_aug", "img_aug", "sspcab")
TEXTURE_CURVE = (("1", "textures_1"), ("10", "textures_10"), ("100", "textures_100"),
                 ("all", "draem"))
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap")
# CPU-sized runs swing by several points between evaluations (bench/RESULTS.md), so the tables
# show the mean of the last evaluations beside the final one.
LATE_EVALS = 3
# The table in README and bench/RESULTS.md: 1,800 steps, evaluated every 300, the reference's
# resize (configs/mvtec_cpu.py of that day; it now trains 7,200 steps on antialiased images).
TABLE_STEPS = 1800
TABLE_EVAL_EVERY = 300


def run_config(name: str, args: argparse.Namespace):
  """configs/mvtec_cpu.py with the run's fields changed."""
  config = mvtec_cpu.get_config(args.category)
  config.data.root = args.mvtec_root
  config.data.texture_root = args.texture_root
  config.data.tfds_data_dir = args.tfds_data_dir
  config.eval.write_overlays = False  # Only the numbers are needed.
  # The measured table's length and learning curve (README), whatever the config's length.
  config.train.num_steps = args.steps or TABLE_STEPS
  config.train.eval_every_steps = 0 if args.steps else TABLE_EVAL_EVERY
  config.checkpoint.every_steps = min(config.checkpoint.every_steps, config.train.num_steps)
  config.data.resize_antialias = False
  for field, value in RUNS[name][0].items():
    group, key = field.split(".")
    config[group][key] = value
  return config


def late_means(run_dir: Path) -> dict[str, float]:
  """Each metric's mean over the run's last LATE_EVALS evaluations (its metrics.jsonl)."""
  by_step = {}  # A resumed run logs some steps twice: the last line of a step counts.
  for record in metric_writers.read_metrics(run_dir):
    if "eval/image_auroc" in record:
      by_step[record["step"]] = record
  last = [by_step[s] for s in sorted(by_step)[-LATE_EVALS:]]
  return {k: sum(r[f"eval/{k}"] for r in last) / len(last) for k in METRICS
          if last and all(r.get(f"eval/{k}") is not None for r in last)}


def _cells(result: dict | None, late: dict[str, float]) -> list[str]:
  """'final (mean of the last evaluations)' per metric, in percent."""
  if result is None:
    return ["not run"] * len(METRICS)
  cells = []
  for k in METRICS:
    cell = f"{100 * result[k]:.1f}" if result.get(k) is not None else "n/a"
    cells.append(cell + (f" ({100 * late[k]:.1f})" if k in late else ""))
  return cells


def _fields(name: str) -> str:
  changes = RUNS[name][0]
  return ", ".join(f"`{k}={v}`" for k, v in changes.items()) or "defaults"


def tables(results: dict[str, dict], steps: int | str, category: str, runs_dir: Path) -> str:
  """The Markdown tables of the results so far; `runs_dir` holds the runs' workdirs."""
  late = {name: late_means(runs_dir / name) for name in results}
  cells = lambda name: " | ".join(_cells(results.get(name), late.get(name, {})))
  out = [f"Each cell: the final evaluation, in brackets the mean of the last {LATE_EVALS} "
         "evaluations of the run (steps 1200, 1500 and 1800 at the default length; with --steps "
         "only the final one).", "",
         f"## Table 3 at the CPU size ({category}, {steps} steps, seed 0)", "",
         "| variant | fields | image AUROC | pixel AUROC | pixel AP | paper Det. | paper Loc. "
         "AUROC | paper Loc. AP |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for name in TABLE3:
    paper = RUNS[name][1]
    out.append(f"| {name} | {_fields(name)} | " + cells(name) +
               " | " + " | ".join(f"{p:.1f}" for p in paper) + " |")
  out += ["", f"## Texture count (paper's Figure 9; {category}, seed 0)", "",
          "| textures | image AUROC | pixel AUROC | pixel AP |", "|---|---:|---:|---:|"]
  for label, name in TEXTURE_CURVE:
    out.append(f"| {label} | " + cells(name) + " |")
  out += ["", "## Noise between runs: the default with two seeds", "",
          "| seed | image AUROC | pixel AUROC | pixel AP |", "|---|---:|---:|---:|"]
  for label, name in (("0", "draem"), ("1", "draem_seed1")):
    out.append(f"| {label} | " + cells(name) + " |")
  return "\n".join(out) + "\n"


def read_results(path: Path) -> dict[str, dict]:
  if not path.is_file():
    return {}
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return {r["name"]: r for r in records}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  shared = REPO.parent / "shared" / "data"
  parser.add_argument("--steps", type=int, default=0,
                      help=f"training steps of every run (0: the table's {TABLE_STEPS})")
  parser.add_argument("--only", default="", help=f"comma-separated runs of {list(RUNS)}")
  parser.add_argument("--category", default="bottle")
  parser.add_argument("--out", default=str(REPO / "bench" / "out" / "ablation"))
  parser.add_argument("--mvtec_root",
                      default=os.environ.get("DRAEM_MVTEC_ROOT", str(shared / "mvtec_ad")))
  parser.add_argument("--texture_root",
                      default=os.environ.get("DRAEM_TEXTURE_ROOT", str(shared / "dtd" / "images")))
  parser.add_argument("--tfds_data_dir", default="", help="where TFDS keeps the prepared data")
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n] or list(RUNS)
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    sys.exit(f"--only names unknown runs {unknown}; the runs are {list(RUNS)}.")
  # Every config is built (and checked) before the first run trains.
  from draem_jax import config_lib  # pylint: disable=g-import-not-at-top
  configs = {name: run_config(name, args) for name in names}
  for config in configs.values():
    config_lib.validate_config(config)
  from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top

  out = Path(args.out)
  results_path = out / "results.jsonl"
  results = read_results(results_path)
  steps = args.steps or configs[names[0]].train.num_steps
  for name in names:
    done = results.get(name)
    if done is not None and done["steps"] == configs[name].train.num_steps:
      print(f"{name}: in {results_path} already, not trained again")
      continue
    start = time.time()
    metrics = trainer.train_and_evaluate(configs[name], out / "runs" / name)
    record = {"name": name, "fields": RUNS[name][0], "steps": configs[name].train.num_steps,
              "seed": configs[name].train.seed, "minutes": (time.time() - start) / 60,
              **{k: float(metrics[k]) for k in METRICS if metrics.get(k) is not None}}
    results[name] = record
    previous = results_path.read_text() if results_path.is_file() else ""
    fileio.atomic_write_text(results_path, previous + json.dumps(record) + "\n")
    text = tables(results, steps, args.category, out / "runs")
    fileio.atomic_write_text(out / "ablation.md", text)
    print(text)
  print(tables(results, steps, args.category, out / "runs"))


if __name__ == "__main__":
  main()
