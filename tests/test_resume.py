"""Exact resume: SIGKILL and SIGTERM on a real training process, and interrupted writes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import numpy as np
import pytest

import helpers
from draem_jax.training import checkpointing
from draem_jax import models
from draem_jax.training import parallel
from draem_jax.training import train_step as ts

# Long enough that a signal sent when a checkpoint appears lands well before the end (a step
# of this toy model takes ~50 ms, a checkpoint of its ~700 arrays ~2 s; startup and
# compilation dominate the test's time).
TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("resume_data")
  return (helpers.make_folder_dataset(base / "parts", num_train=8),
          helpers.make_textures(base / "textures"))


def _command(data_dirs, workdir: Path, every_steps: int = 4) -> list[str]:
  root, textures = data_dirs
  config = helpers.tiny_config(root, textures, source="folder")
  config.data.category = "parts"
  config.train.batch_size = 2
  config.train.num_steps = TOTAL_STEPS
  config.train.log_every_steps = 1
  config.checkpoint.every_steps = every_steps
  config.checkpoint.max_to_keep = 10
  return [sys.executable, str(helpers.REPO / "train.py"), "--config",
          str(helpers.REPO / "configs" / "mvtec.py"), f"--workdir={workdir}",
          *helpers.config_flags(config)]


def _env():
  # One CPU device in the subprocesses (the test process itself has four).
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _steps(workdir: Path) -> list[int]:
  ckpt = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _wait_for(proc, condition, timeout=240):
  start = time.time()
  while not condition():
    if proc.poll() is not None:
      out = proc.stdout.read() if proc.stdout else ""
      raise AssertionError(f"training exited early with {proc.returncode}:\n{out[-3000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError("timed out waiting for training progress")
    time.sleep(0.05)


def _final_state(workdir: Path, step: int):
  """Restores checkpoint `step` of a run as numpy arrays."""
  return helpers.restore_tiny_state(workdir, step, TOTAL_STEPS)


def test_sigkill_and_sigterm_resume_bit_identically(data_dirs, tmp_path):
  reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
  run = lambda cmd, **kw: subprocess.run(cmd, env=_env(), capture_output=True, text=True,
                                         timeout=600, **kw)
  # The uninterrupted reference only needs its final state (saving does not change training).
  done = run(_command(data_dirs, reference_dir, every_steps=TOTAL_STEPS))
  assert done.returncode == 0, done.stderr[-3000:]
  assert _steps(reference_dir) == [TOTAL_STEPS]

  # 1) SIGKILL once the step-4 checkpoint exists: nothing gets the chance to clean up.
  proc = subprocess.Popen(_command(data_dirs, interrupted_dir), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(proc, lambda: 4 in _steps(interrupted_dir))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _steps(interrupted_dir)[-1] < TOTAL_STEPS

  # 2) Restart; SIGTERM after it has moved past its restored checkpoint: it must save the
  # step it reached (not a multiple of checkpoint.every_steps in general) and exit 143.
  restart_from = _steps(interrupted_dir)[-1]
  metrics = interrupted_dir / "metrics.jsonl"
  # Lines the killed run logged past its checkpoint are still in the file: wait for a line
  # the restarted process wrote (they differ in "time"), else SIGTERM can land before the
  # restarted process has installed its handler.
  stale = set(metrics.read_text().splitlines()) if metrics.is_file() else set()
  step_of = lambda line: int(line.split('"step": ')[1].split(",")[0])
  logged = lambda: [step_of(l) for l in metrics.read_text().splitlines() if l.strip()]
  proc = subprocess.Popen(_command(data_dirs, interrupted_dir), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(proc, lambda: metrics.is_file() and any(
      step_of(l) > restart_from and l not in stale
      for l in metrics.read_text().splitlines() if l.strip()))
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=240)
  if proc.returncode == 0:  # It finished before the signal landed: nothing left to check.
    pytest.fail("training finished before SIGTERM; make the run longer")
  assert proc.returncode == 143, out[-3000:]
  stopped_at = max(logged())
  assert _steps(interrupted_dir)[-1] == stopped_at > restart_from

  # 3) Restart again and finish.
  done = run(_command(data_dirs, interrupted_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Resuming from step" in done.stderr

  reference = _final_state(reference_dir, TOTAL_STEPS)
  resumed = _final_state(interrupted_dir, TOTAL_STEPS)
  leaves_ref = jax.tree_util.tree_leaves_with_path(reference)
  leaves_res = jax.tree_util.tree_leaves(resumed)
  assert len(leaves_ref) == len(leaves_res)
  for (path, a), b in zip(leaves_ref, leaves_res):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
  # The metrics log reads as one run: each step once, in order.
  steps = logged()
  assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS


class _FailingIterator(grain.DatasetIterator):
  """A data iterator whose state cannot be read: the save breaks half-way."""

  def __next__(self):
    raise StopIteration

  def get_state(self):
    raise OSError("disk full (simulated)")

  def set_state(self, state):
    del state


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.DRAEM(4, 4)
  tx = ts.make_optimizer(helpers.tiny_config().optim, 10)
  state = ts.create_train_state(jax.random.key(0), model, tx, (32, 32), mesh)
  checkpointer = checkpointing.Checkpointer(tmp_path / "ckpt")
  checkpointer.save(1, state)
  with pytest.raises(Exception):
    checkpointer.save(2, state, _FailingIterator())
  checkpointer.close()
  # A writer killed mid-write leaves its temporary folder behind; emulate that as well.
  (tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-1234").mkdir()
  reopened = checkpointing.Checkpointer(tmp_path / "ckpt")
  try:
    assert reopened.latest_step() == 1
    abstract = ts.abstract_train_state(model, tx, (32, 32), mesh)
    restored = jax.device_get(reopened.restore(abstract))
  finally:
    reopened.close()
  expected = jax.device_get(state)
  for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(restored)):
    assert np.array_equal(a, b)
