"""The training job: `train_and_evaluate(config, workdir)`.

A run lives in its workdir: config.json, metrics.jsonl, tensorboard/, checkpoints/,
eval/<step>/ and, with a validation split, validation_files.json. Starting it again with the
same workdir resumes from the newest checkpoint with the exact state, data position and
simulator draws, so a run killed at any moment (preempted TPU VM, SIGKILL, power loss)
continues as if it had never stopped. SIGTERM saves a checkpoint at the current step before
the process exits.
"""

import json
import logging as pylogging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from draem_jax.training import checkpointing
from draem_jax import config_lib
from draem_jax import data as data_lib
from draem_jax.data import pipeline
from draem_jax.evaluation import evaluator
from draem_jax import fileio
from draem_jax.training import metric_writers
from draem_jax import models
from draem_jax.training import parallel
from draem_jax.evaluation import report
from draem_jax.simulation import simulator
from draem_jax.training import train_step as train_step_lib
from draem_jax.evaluation import validation
from draem_jax.errors import ConfigError, DataError

CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
SPLIT_FILE = "validation_files.json"  # The run's held-out (and training) file names.


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Preempted(Exception):  # pylint: disable=g-bad-exception-name
  """SIGTERM arrived; a checkpoint at the current step was saved."""

  def __init__(self, step: int):
    super().__init__(f"stopped by SIGTERM after saving a checkpoint at step {step}; run the "
                     "same command again to resume.")
    self.step = step


class _SigtermFlag:
  """Turns SIGTERM into a flag the training loop checks between steps."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step.")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _log_topology(mesh) -> None:
  logging.info("JAX %s, backend %s: process %d of %d, %d local / %d global devices: %s",
               jax.__version__, jax.default_backend(), jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               ", ".join(str(d) for d in mesh.devices.flat))


def _agree(flag: bool) -> bool:
  """True on every process if it is True on any (one process alone must never save: a save is
  collective). Free with one process; with several, one tiny all-gather per step."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Means over the logging window; the learning rate is the latest one."""
  fetched = jax.device_get(history)
  out = {k: float(np.mean([h[k] for h in fetched])) for k in fetched[0]}
  if "learning_rate" in out:
    out["learning_rate"] = float(fetched[-1]["learning_rate"])
  return out


class _LibraryInfoFilter(pylogging.Filter):
  """Drops INFO chatter of Orbax, grain and TFDS (dozens of lines per checkpoint)."""

  _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}",
            f"{os.sep}tensorflow_datasets{os.sep}")

  def filter(self, record):
    return record.levelno > pylogging.INFO or not any(n in record.pathname
                                                      for n in self._NOISY)


def quiet_library_logs() -> None:
  """Keeps the run's own INFO logs readable; library warnings and errors still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def _check_finite(metrics: dict[str, float], step: int, last_checkpoint: int | None,
                  workdir: Path) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in "
            f"{workdir / CHECKPOINT_DIR}" if last_checkpoint is not None else
            "no checkpoint had been written yet")
    raise TrainingDivergedError(
        f"non-finite training metrics {bad} at or before step {step}; {kept}. Lower "
        "optim.learning_rate, or use model.dtype='float32', and train again (with a new "
        "--workdir to start over).")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       allow_config_change: bool = False) -> Any:
  """Trains DRAEM per `config` in `workdir`, resuming if it holds a run; then evaluates.

  `data.category='all'` (MVTec AD) trains the 15 categories one after another, each in
  `workdir/<category>`, and returns {category: metrics}.

  A workdir that holds a run is resumed only with the config it was trained with (fields
  that alter the trajectory; `config_lib.check_resumable`), unless `allow_config_change`:
  then the run continues from its newest checkpoint under the new config and the replaced
  config is kept in `workdir/config_history.jsonl`.

  Returns:
    The final evaluation metrics (None when the data has no test split).
  """
  config_lib.validate_config(config)
  quiet_library_logs()
  parallel.maybe_initialize_distributed(config.train)
  workdir = Path(workdir).expanduser().absolute()
  if config.data.source == "mvtec" and config.data.category == "all":
    results = {}
    for category in data_lib.MVTEC_CATEGORIES:
      logging.info("=== category %s ===", category)
      results[category] = _train_one(config_lib.for_category(config, category),
                                     workdir / category, allow_config_change)
    if jax.process_index() == 0:
      from draem_jax.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
      done = {c: r for c, r in results.items() if r is not None}
      fileio.atomic_write_text(workdir / "summary.md", metrics_lib.summary_table(done) + "\n")
      index = report.write_index(workdir / report.REPORT_FILE, {
          c: (metrics_lib.json_safe(r), workdir / c / EVAL_DIR / str(r["step"]) /
              report.REPORT_FILE) for c, r in done.items()})
      print(f"Report of all categories: {index}")
    return results
  return _train_one(config, workdir, allow_config_change)


def _train_one(config: ml_collections.ConfigDict, workdir: Path,
               allow_config_change: bool = False) -> Any:
  """One category's run (see `train_and_evaluate`)."""
  process_index, process_count = jax.process_index(), jax.process_count()
  mesh = parallel.make_mesh()
  _log_topology(mesh)
  parallel.check_batch_size(config.train.batch_size, mesh)
  data_lib.validate_data_config(config, process_count=process_count,
                                require_test=config.train.eval_every_steps > 0)
  num_examples = data_lib.num_train_examples(config)
  total_steps = train_step_lib.num_train_steps(config.train, num_examples)
  image_shape = data_lib.train_input_hw(config)

  resumed_from = checkpointing.committed_steps(workdir / CHECKPOINT_DIR)
  resumed_from = resumed_from[-1] if resumed_from else None
  if (workdir / config_lib.CONFIG_FILE).is_file():
    saved = config_lib.load_config(workdir)
    # Without a checkpoint nothing was trained yet: a changed config starts the run afresh.
    changes = config_lib.check_resumable(saved, config, workdir,
                                         allow_change=allow_config_change
                                         or resumed_from is None)
    if changes and resumed_from is not None:
      _check_same_state_shapes(saved, config, changes, workdir, resumed_from, mesh)
      logging.warning("Continuing from step %d with a changed config (--allow_config_change): "
                      "%s", resumed_from, changes)
  split = _check_split(config, workdir, resuming=resumed_from is not None)

  model = models.create_model(config.model)
  tx = train_step_lib.make_optimizer(config.optim, total_steps)
  learning_rate_fn = train_step_lib.learning_rate_schedule(config.optim, total_steps)
  checkpointer = checkpointing.Checkpointer(workdir / CHECKPOINT_DIR,
                                            config.checkpoint.max_to_keep)
  train_iter = data_lib.make_train_iterator(config, process_index=process_index,
                                            process_count=process_count)
  try:
    start_step = checkpointer.latest_step()
    if start_step is None:
      param_key, _ = train_step_lib.run_keys(config.train.seed)
      state = train_step_lib.create_train_state(param_key, model, tx, image_shape, mesh)
      start_step = 0
    else:
      abstract = train_step_lib.abstract_train_state(model, tx, image_shape, mesh)
      state = checkpointer.restore(abstract, train_iter, step=start_step)
      logging.info("Resuming from step %d.", start_step)
    # Only now: config.json must describe a model that a checkpoint of the run matches.
    if process_index == 0:
      config_lib.save_config(config, workdir, step=resumed_from)
      if split is not None:
        fileio.atomic_write_json(workdir / SPLIT_FILE, split)
    local = config.train.batch_size // process_count
    logging.info("Process %d of %d loads rows [%d, %d) of every global batch of %d.",
                 process_index, process_count, process_index * local,
                 (process_index + 1) * local, config.train.batch_size)
    logging.info("%d training images (%s), %d steps (%d per epoch at batch %d).", num_examples,
                 validation.describe_split(config),
                 total_steps, train_step_lib.steps_per_epoch(config.train.batch_size, num_examples),
                 config.train.batch_size)
    step_fn = train_step_lib.jit_train_step(
        train_step_lib.make_train_step(model, tx, config, simulate=simulator.simulate,
                                       learning_rate_fn=learning_rate_fn), mesh)
    writer = metric_writers.MetricWriter(workdir, start_step, enabled=process_index == 0)
    try:
      state = _loop(config, workdir, mesh, state, step_fn, train_iter, checkpointer, writer,
                    start_step, total_steps, model)
      final_step = int(jax.device_get(state.step))
      eval_dir = workdir / EVAL_DIR / str(final_step)
      # Thresholds from the held-out good images: predict.py needs no test split to decide.
      thresholds = (validation.calibrate(config, state.variables(), model, mesh, eval_dir,
                                         step=final_step)
                    if data_lib.has_validation_split(config) else None)
      if not data_lib.has_test_split(config):
        logging.info("No test split: training done at step %d, no evaluation.", final_step)
        return None
      result = evaluator.evaluate(config, state.variables(), model, mesh, eval_dir,
                                   step=final_step, thresholds=thresholds)
      writer.write_scalars(final_step, _eval_scalars(result))
      if process_index == 0:
        print(f"Report: {eval_dir / report.REPORT_FILE}")
      return result
    finally:
      writer.close()
  finally:
    train_iter.close()
    checkpointer.close()


def _check_split(config: ml_collections.ConfigDict, workdir: Path, resuming: bool
                 ) -> dict[str, list[str]] | None:
  """The run's split of train/good into training and held-out files, checked against the one
  recorded in `workdir/validation_files.json` when the run resumes.

  Membership is by file name (`pipeline.holdout_key`), so added or removed images leave every
  other image where it was. What a resume must not do is move an image between the parts: a
  held-out image would be trained on (its thresholds then come from images the networks have
  seen), or an image trained on would be held out. That is refused before any compute.

  Returns:
    {'train': [...], 'validation': [...]} to record (None: no validation split, none recorded).

  Raises:
    DataError: a recorded file changed sides (the message names them and how to proceed).
  """
  path = workdir / SPLIT_FILE
  if not (data_lib.has_validation_split(config) or path.is_file()):
    return None
  now = pipeline.split_file_names(config)
  if not resuming:
    return now
  if not path.is_file():
    logging.warning("%s does not exist (a run started before it was written): the validation "
                    "split is recorded now, not compared.", path)
    return now
  try:
    recorded = json.loads(path.read_text())
    before_val, before_train = set(recorded["validation"]), set(recorded["train"])
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ConfigError(f"{path} is not a split written by train.py ({e!r}); restore it, or "
                      "train in a new --workdir.") from e
  to_train = sorted(before_val & set(now["train"]))
  to_val = sorted(before_train & set(now["validation"]))
  if to_train or to_val:
    def some(names):
      return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    moved = ([f"{len(to_train)} held-out image(s) would now be trained on ({some(to_train)})"]
             if to_train else []) + (
             [f"{len(to_val)} image(s) trained on would now be held out ({some(to_val)})"]
             if to_val else [])
    raise DataError(
        f"the validation split of the run in {workdir} changed since it was recorded in "
        f"{path}: {'; '.join(moved)}. Resuming would mix training and validation images. Use "
        "the data.validation_* settings the run had (images may be added or removed: the "
        "others keep their side), or train in a new --workdir.")
  added = set(now["train"]) | set(now["validation"])
  gone = (before_val | before_train) - added
  if gone or added - before_val - before_train:
    logging.info("Training images changed since the split was recorded: %d added, %d gone; "
                 "every other image keeps its side.",
                 len(added - before_val - before_train), len(gone))
  return now


def _state_shapes(config: ml_collections.ConfigDict, mesh) -> dict[str, tuple]:
  """{leaf path: (shape, dtype)} of the train state `config` builds (no allocation)."""
  model = models.create_model(config.model)
  tx = train_step_lib.make_optimizer(config.optim, total_steps=1)
  abstract = train_step_lib.abstract_train_state(model, tx, data_lib.train_input_hw(config),
                                                 mesh)
  return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _check_same_state_shapes(saved: ml_collections.ConfigDict,
                             config: ml_collections.ConfigDict, changes: dict,
                             workdir: Path, step: int, mesh) -> None:
  """Refuses, before anything is written, a changed config whose networks the run's
  checkpoints cannot hold (e.g. another model.recon_width): --allow_config_change continues a
  run, it cannot turn its parameters into other shapes."""
  old, new = _state_shapes(saved, mesh), _state_shapes(config, mesh)
  if old == new:
    return
  differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  example = differing[0]
  listed = "; ".join(f"{field}: {a!r} -> {b!r}" for field, (a, b) in changes.items()
                     if field.startswith("model."))
  raise ConfigError(
      f"checkpoint {step} in {workdir / CHECKPOINT_DIR} holds networks of other shapes than this "
      f"config builds ({listed or 'changed fields: ' + ', '.join(changes)}; e.g. {example}: "
      f"{old.get(example, '(absent)')} -> {new.get(example, '(absent)')}). "
      "--allow_config_change continues a run only with networks of the same shapes: train "
      "the changed model in a new --workdir. Nothing in the run was changed.")


def _eval_scalars(result: dict[str, Any]) -> dict[str, float]:
  return {f"eval/{k}": float(result[k]) for k in ("image_auroc", "pixel_auroc", "pixel_ap",
                                                  "aupro") if result.get(k) is not None}


def _loop(config, workdir, mesh, state, step_fn, train_iter, checkpointer, writer,
          start_step: int, total_steps: int, model):
  """The step loop: train, log, checkpoint, evaluate; returns the final state."""
  log_every = config.train.log_every_steps
  ckpt_every = config.checkpoint.every_steps
  eval_every = config.train.eval_every_steps
  batch_size = config.train.batch_size
  last_checkpoint = checkpointer.latest_step()
  history = []
  step = start_step
  bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  window_start, window_steps = time.perf_counter(), 0
  with _SigtermFlag() as sigterm:
    while step < total_steps:
      batch = parallel.global_batch(next(train_iter), mesh)
      state, metrics = step_fn(state, batch)
      step += 1
      window_steps += 1
      history.append(metrics)
      bar.update(1)
      # Read the flag once: a SIGTERM landing between the save decision and the exit check
      # would otherwise exit without saving the step just taken.
      preempted = _agree(sigterm.raised)
      must_save = step % ckpt_every == 0 or step == total_steps or preempted
      if step % log_every == 0 or must_save or step == total_steps:
        scalars = _mean_metrics(history)
        history = []
        _check_finite(scalars, step, last_checkpoint, workdir)
        elapsed = time.perf_counter() - window_start
        scalars["steps_per_second"] = window_steps / max(elapsed, 1e-9)
        scalars["images_per_second"] = scalars["steps_per_second"] * batch_size
        window_start, window_steps = time.perf_counter(), 0
        writer.write_scalars(step, scalars)
        # The bar shows the window's mean loss and throughput (fetched only at logging steps,
        # so the device is not synchronised every step).
        bar.set_postfix_str(f"loss {scalars['loss']:.4f}  "
                            f"{scalars['images_per_second']:.1f} img/s")
      if must_save:
        checkpointer.save(step, state, train_iter)
        last_checkpoint = step
      if preempted:
        bar.close()
        raise Preempted(step)
      if eval_every and step % eval_every == 0 and step < total_steps:
        result = evaluator.evaluate(config, state.variables(), model, mesh,
                                     workdir / EVAL_DIR / str(step), step=step,
                                     write_overlays=False)
        writer.write_scalars(step, _eval_scalars(result))
  bar.close()
  return state
