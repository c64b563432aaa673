"""Using a trained run: restore it from its workdir, evaluate it, score new images.

`evaluate.py` and `predict.py` are thin flag wrappers around `evaluate_workdir` and
`predict_images`.
"""

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh
from tqdm import tqdm

from draem_jax.training import checkpointing
from draem_jax import config_lib
from draem_jax import data as data_lib
from draem_jax.evaluation import evaluator
from draem_jax import fileio
from draem_jax.evaluation import metrics as metrics_lib
from draem_jax import models
from draem_jax.training import parallel
from draem_jax.evaluation import report
from draem_jax import scoring
from draem_jax.training import train_step as train_step_lib
from draem_jax.evaluation import validation
from draem_jax.data import images as images_lib
from draem_jax.errors import ConfigError
from draem_jax.training.trainer import CHECKPOINT_DIR, EVAL_DIR


class LoadedRun(NamedTuple):
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: Any  # {'params', 'batch_stats'}, replicated on `mesh`.
  mesh: Mesh
  step: int


def load_run(workdir: str | os.PathLike, step: int | None = None) -> LoadedRun:
  """Restores a run's config and the model variables of checkpoint `step` (default newest)."""
  workdir = Path(workdir).expanduser()
  config = config_lib.load_config(workdir)
  checkpointer = checkpointing.Checkpointer(workdir / CHECKPOINT_DIR,
                                            config.checkpoint.max_to_keep)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir / CHECKPOINT_DIR} holds no checkpoint yet: train first "
                              f"(python train.py ... --workdir {workdir}).")
    mesh = parallel.make_mesh()
    model = models.create_model(config.model)
    tx = train_step_lib.make_optimizer(config.optim, total_steps=1)  # Structure only.
    abstract = train_step_lib.abstract_train_state(model, tx, data_lib.train_input_hw(config),
                                                   mesh)
    state = checkpointer.restore(abstract, step=step)
  finally:
    checkpointer.close()
  return LoadedRun(config, model, state.variables(), mesh, int(step))


def _run_workdirs(workdir: Path) -> list[Path]:
  """The workdir itself, or for an `all` run its per-category sub-workdirs.

  An `all` run (configs/mvtec.py:all) keeps no config.json at its top: each category trained
  so far has its own `<workdir>/<category>/config.json`.
  """
  if not (workdir / config_lib.CONFIG_FILE).is_file():
    categories = [workdir / c for c in data_lib.MVTEC_CATEGORIES
                  if (workdir / c / config_lib.CONFIG_FILE).is_file()]
    if categories:
      return categories
  config = config_lib.load_config(workdir)  # Names the missing config.json if there is none.
  if config.data.source == "mvtec" and config.data.category == "all":
    return [workdir / c for c in data_lib.MVTEC_CATEGORIES
            if (workdir / c / config_lib.CONFIG_FILE).is_file()]
  return [workdir]


def evaluation_name(config: ml_collections.ConfigDict, protocol: str | None,
                    full_resolution: bool | None) -> str | None:
  """None for an evaluation with the run's own eval.protocol and eval.aupro_full_resolution,
  else the name of its own folder: `<protocol>[_full_resolution]` (`evaluation_dir`)."""
  own_protocol = str(config.eval.protocol)
  own_full = bool(config.eval.get("aupro_full_resolution", False))
  protocol = own_protocol if protocol is None else protocol
  full = own_full if full_resolution is None else bool(full_resolution)
  if protocol == own_protocol and full == own_full:
    return None
  return protocol + ("_full_resolution" if full else "")


def evaluation_dir(run_dir: Path, step: int, config: ml_collections.ConfigDict,
                   protocol: str | None, full_resolution: bool | None) -> Path:
  """Where an evaluation of checkpoint `step` goes: `<run_dir>/eval/<step>/` with the run's own
  protocol and resolution (training's evaluation: the metrics, scores and thresholds that
  predict.py and export.py read), else its own sub-folder
  `<run_dir>/eval/<step>/<protocol>[_full_resolution]/`, so that nothing of training's is
  replaced by numbers of another protocol."""
  base = run_dir / EVAL_DIR / str(step)
  name = evaluation_name(config, protocol, full_resolution)
  return base if name is None else base / name


def evaluate_workdir(workdir: str | os.PathLike, step: int | None = None,
                     protocol: str | None = None, full_resolution: bool | None = None,
                     write_overlays: bool | None = None,
                     out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Evaluates a run (every category of an `all` run); returns {category: metrics}.

  Args:
    workdir: a folder written by train.py.
    step: checkpoint step (default: newest).
    protocol: "paper" or "standard" (default: the run's eval.protocol).
    full_resolution: also AU-PRO at the original resolution (default: the run's config).
    write_overlays: overlay PNGs (default: the run's eval.write_overlays).
    out_dir: output folder (default: `evaluation_dir`, per category for `all` runs).
  """
  workdir = Path(workdir).expanduser()
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist.")
  results, reports = {}, {}
  runs = _run_workdirs(workdir)
  for run_dir in runs:
    run = load_run(run_dir, step)
    config = ml_collections.ConfigDict(run.config.to_dict())
    if protocol is not None:
      config.eval.protocol = protocol
    if full_resolution is not None:
      config.eval.aupro_full_resolution = full_resolution
    config_lib.validate_config(config)
    out = Path(out_dir) / run_dir.name if out_dir and len(runs) > 1 else out_dir
    out = (Path(out) if out else
           evaluation_dir(run_dir, run.step, run.config, protocol, full_resolution))
    thresholds = validation.thresholds_for(config, run.variables, run.model, run.mesh,
                                           run_dir / EVAL_DIR / str(run.step), step=run.step)
    result = evaluator.evaluate(config, run.variables, run.model, run.mesh, out,
                                 step=run.step, write_overlays=write_overlays,
                                 thresholds=thresholds)
    results[str(config.data.category)] = result
    reports[str(config.data.category)] = (metrics_lib.json_safe(result), out / report.REPORT_FILE)
    print(f"{config.data.category} (step {run.step}, protocol {config.eval.protocol}): " +
          ", ".join(f"{k} {100 * result[k]:.1f}" for k in
                    ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
                    if result.get(k) is not None and np.isfinite(result[k])) +
          f"  -> {out}")
  if jax.process_index() == 0:
    if runs != [workdir]:  # An `all` run (even with one category trained so far).
      # Beside training's summary only with the run's own settings, else in a folder of its own.
      name = evaluation_name(config_lib.load_config(runs[0]), protocol, full_resolution)
      top = Path(out_dir) if out_dir else workdir if name is None else workdir / f"eval_{name}"
      fileio.atomic_write_text(top / "summary.md", metrics_lib.summary_table(results) + "\n")
      index = report.write_index(top / report.REPORT_FILE, reports)
      print(f"Report: {index}")
    elif runs:
      print(f"Report: {reports[str(config.data.category)][1]}")
  return results


# ------------------------------------------------------------------------------------------
# Scoring new images.


find_images = images_lib.find_images


def eval_thresholds(workdir: Path, step: int) -> dict[str, float]:
  """Image and pixel F1-max thresholds from `workdir/eval/<step>/metrics.json` (if present)."""
  path = workdir / EVAL_DIR / str(step) / evaluator.METRICS_FILE
  if not path.is_file():
    return {}
  saved = json.loads(path.read_text())
  return {k: float(saved[k]) for k in ("f1_threshold", "pixel_f1_threshold")
          if saved.get(k) is not None}


def _source(validated: dict[str, Any] | None, found: dict[str, float]) -> str:
  if validated is not None:
    return f"validation split of train/good ({validated.get('method')}, thresholds.json)"
  return ("f1_max on the test split (evaluate.py)" if "f1_threshold" in found
          else "none: run evaluate.py or choose a threshold")


def run_thresholds(run: LoadedRun, workdir: str | os.PathLike) -> dict[str, Any]:
  """The decision thresholds of checkpoint `run.step`: one rule for predict.py (through
  `decision_thresholds`) and export.py.

  1. The validation split's: the checkpoint's thresholds.json, chosen now (and written) if the
     run holds out a validation split and it is missing (an intermediate checkpoint, a run
     stopped before its final evaluation).
  2. Else the test-split F1-max thresholds that the run's own evaluation wrote to
     `eval/<step>/metrics.json`.
  3. Else none: the image threshold is None (pass one by hand).

  Returns:
    {'image_threshold': float or None, 'pixel_threshold': float (0.5 when none was found),
     'threshold_source': str, 'validated': the thresholds.json content or None}.
  """
  workdir = Path(workdir).expanduser()
  validated = validation.thresholds_for(run.config, run.variables, run.model, run.mesh,
                                        workdir / EVAL_DIR / str(run.step), step=run.step)
  if validated is not None:
    return {"image_threshold": float(validated["image_threshold"]),
            "pixel_threshold": float(validated["pixel_threshold"]),
            "threshold_source": _source(validated, {}), "validated": validated}
  found = eval_thresholds(workdir, run.step)
  return {"image_threshold": found.get("f1_threshold"),
          "pixel_threshold": found.get("pixel_f1_threshold", 0.5),
          "threshold_source": _source(None, found), "validated": None}


def decision_thresholds(workdir: Path, run: LoadedRun, threshold: float | None = None,
                        sensitivity: float | None = None
                        ) -> tuple[float, float, dict[str, Any] | None]:
  """The image and pixel thresholds that predict.py decides with, and the validation statistics.

  The image threshold is `threshold`; else that of `run_thresholds` (as export.py's), the
  validation split's moved by `sensitivity` (default: the one it was chosen with).

  Returns:
    (image threshold, pixel threshold, the validation thresholds with their min-max statistics
    for `validation.normalize`, or None without a validation split).

  Raises:
    ConfigError: no threshold at all, or --sensitivity without a validation split.
  """
  decided = run_thresholds(run, workdir)
  chosen = decided["validated"]
  if chosen is not None:
    if sensitivity is not None:
      chosen = validation.with_sensitivity(chosen, sensitivity)
    if threshold is not None:  # A raw threshold given by hand: normalise around it.
      chosen = dict(chosen, image_threshold=float(threshold))
    return float(chosen["image_threshold"]), float(chosen["pixel_threshold"]), chosen
  if sensitivity is not None:
    raise ConfigError("--sensitivity needs the validation split's statistics, and this run "
                      "has none (data.validation_fraction=0); pass --threshold instead.")
  if threshold is None:
    if decided["image_threshold"] is None:
      raise ConfigError(
          f"no decision threshold: {workdir / EVAL_DIR / str(run.step) / 'metrics.json'} "
          f"does not exist. Run `python evaluate.py --workdir {workdir}` first (it finds the "
          "F1-max threshold on the test split), or pass --threshold, or train with "
          "--config.data.validation_fraction=0.1 to choose it on held-out good images.")
    threshold = decided["image_threshold"]
  return float(threshold), float(decided["pixel_threshold"]), None


def threshold_source(chosen: dict[str, Any] | None, threshold: float | None,
                     sensitivity: float | None) -> str:
  """Where `decision_thresholds`' image threshold came from, in words."""
  if threshold is not None:
    return "given by hand (--threshold)"
  if chosen is not None and sensitivity is not None:
    return _source(chosen, {}) + f", moved by --sensitivity={sensitivity:g}"
  return _source(chosen, {"f1_threshold": 0.0})


def describe_thresholds(metadata: dict[str, Any], workdir: Path) -> str:
  """What the decision threshold is and what is known of it, for predict.py's console: the
  real defects of the test split first (if the run's evaluation measured them at this
  threshold), then the validation split's figures, labelled as synthetic.

  Args:
    metadata: a `Detector.from_workdir`'s metadata (image_threshold, threshold_source,
      checkpoint_step and, for the validation split's own threshold, its 'validation' block).
    workdir: the run's folder.
  """
  lines = [f"Image threshold {metadata['image_threshold']:.4g}: "
           f"{metadata['threshold_source']}."]
  val = metadata.get("validation")
  if not val:
    return lines[0]
  path = workdir / EVAL_DIR / str(metadata["checkpoint_step"]) / evaluator.METRICS_FILE
  real = json.loads(path.read_text()).get("validation_threshold") if path.is_file() else None
  if real:
    lines.append(f"  On the test split's real defects at this threshold: recall "
                 f"{_percent(real.get('image_recall'))}, false-positive rate "
                 f"{_percent(real.get('image_fpr'))} ({path}).")
  at = val.get("synthetic_image", val.get("image")) or {}
  auroc = val.get("synthetic_image_auroc", val.get("image_auroc"))
  lines.append(f"  On the validation split's synthetic anomalies: image AUROC {_percent(auroc)}, "
               f"recall {_percent(at.get('recall'))}. " + validation.SYNTHETIC_NOTE)
  return "\n".join(lines)


def _percent(value) -> str:
  return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def predict_images(workdir: str | os.PathLike, images: str, out_dir: str | os.PathLike,
                   step: int | None = None, threshold: float | None = None,
                   write_overlays: bool = True,
                   sensitivity: float | None = None) -> scoring.Scored:
  """Scores images of any size (RGB or grayscale) with a trained run (`draem_jax.Detector`).

  Writes `<out_dir>/<name>.png` (image | heatmap overlay | predicted mask, at the image's own
  resolution), `scores.csv` (as batches are scored) and `scores.json`; files that cannot be
  read are skipped and listed in `errors.csv` (`draem_jax.scoring`). An image is called
  anomalous when its raw score is >= the threshold of `decision_thresholds` (export.py's
  rule, or `threshold`, or moved by `sensitivity`). With validation statistics each record
  also has `normalized_score` (the threshold at 0.5, `metrics.normalize_scores`).

  Returns:
    One record per readable image (file, score (raw), normalized_score (None without
    validation statistics), threshold (raw), anomalous), as a list whose `errors` attribute
    holds one {'file', 'error'} per file that could not be read.
  """
  from draem_jax.detector import Detector  # pylint: disable=g-import-not-at-top
  workdir = Path(workdir).expanduser()
  out_dir = scoring.check_out_dir(out_dir)  # Before the model loads.
  paths = find_images(images)
  detector = Detector.from_workdir(workdir, step, threshold=threshold, sensitivity=sensitivity)
  if jax.process_index() == 0:
    print(describe_thresholds(detector.metadata, workdir))
  records = scoring.score_files(detector, paths, out_dir, write_overlays=write_overlays,
                                progress=lambda s: tqdm(s, desc="scoring", unit="batch"))
  logging.info("Scored %d images; %d anomalous at threshold %.4f -> %s", len(records),
               sum(r["anomalous"] for r in records), detector.threshold, out_dir)
  return records
