"""Multi-process training with real JAX processes on localhost (CPU collectives over gloo).

One uninterrupted 2-process run (2 processes x 1 CPU device) on the real bottle images is shared
by the tests: it must train, calibrate its thresholds on the validation split and evaluate like
1 process with 2 devices at the same global batch (eval.batch_size 3: every evaluation batch is
padded across the processes), and a 2-process run killed with SIGKILL, stopped with SIGTERM on
one process and restarted must end in exactly its state; a restart on another number of
processes is refused.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import helpers
from draem_jax.training import parallel

TOTAL_STEPS = 12
BATCH = 4  # Global batch: 2 rows per process.
EVAL_BATCH = 3  # Not a multiple of the 2 devices: padded to 4.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir: Path, every_steps: int, extra=()) -> list[str]:
  config = helpers.tiny_config()
  config.train.batch_size = BATCH
  config.train.num_steps = TOTAL_STEPS
  config.train.log_every_steps = 1
  config.checkpoint.every_steps = every_steps
  config.checkpoint.max_to_keep = 10
  config.eval.write_overlays = False
  config.eval.batch_size = EVAL_BATCH
  config.data.validation_fraction = 0.1  # 18 of bottle's 209 images held out.
  return [sys.executable, str(helpers.REPO / "train.py"), "--config",
          str(helpers.REPO / "configs" / "mvtec.py"), f"--workdir={workdir}",
          *helpers.config_flags(config), *extra]


def _env(devices: int):
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
              PYTHONUNBUFFERED="1")


def _start(workdir: Path, processes: int, every_steps: int) -> list[subprocess.Popen]:
  """`processes` train.py processes with one CPU device each (1 process: two devices)."""
  if processes == 1:
    return [subprocess.Popen(_command(workdir, every_steps), env=_env(2),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
  address = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen(
      _command(workdir, every_steps, ["--config.train.distributed=True",
                                      f"--config.train.coordinator_address={address}",
                                      f"--config.train.num_processes={processes}",
                                      f"--config.train.process_id={p}",
                                      "--config.train.initialization_timeout=120"]),
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for p in range(processes)]


def _finish(procs, timeout=600) -> list[str]:
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _steps(workdir: Path) -> list[int]:
  ckpt = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _final_state(workdir: Path):
  return helpers.restore_tiny_state(workdir, TOTAL_STEPS, TOTAL_STEPS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
  """An uninterrupted 2-process run and a 1-process, 2-device run, started side by side."""
  del shared_data
  base = tmp_path_factory.mktemp("multiprocess")
  two, one = base / "two_processes", base / "one_process"
  procs = _start(two, 2, TOTAL_STEPS) + _start(one, 1, TOTAL_STEPS)
  outs = _finish(procs)
  return {"two": two, "one": one, "logs": outs[:2]}


def test_two_processes_train_like_one_process_with_two_devices(runs):
  two, one = _final_state(runs["two"]), _final_state(runs["one"])
  leaves_one = jax.tree_util.tree_leaves(one)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(two), leaves_one):
    # Same global batches and anomalies; only the order of the cross-device gradient sums may
    # differ (gloo across processes vs XLA within one), hence float32 round-off after 12 steps.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  # Each process loaded its own half of every global batch (the pipeline test checks that
  # these rows are disjoint images within an epoch).
  for p, log in enumerate(runs["logs"]):
    assert f"Process {p} of 2 loads rows [{2 * p}, {2 * p + 2}) of every global batch of 4" in log
  # Process 0 alone wrote the logs and the evaluation; evaluation agrees with the 1-process run.
  lines = (runs["two"] / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines if "loss" in l] == list(range(1, TOTAL_STEPS + 1))
  ev2 = json.loads((runs["two"] / "eval" / str(TOTAL_STEPS) / "metrics.json").read_text())
  ev1 = json.loads((runs["one"] / "eval" / str(TOTAL_STEPS) / "metrics.json").read_text())
  assert ev2["num_test_images"] == 83
  np.testing.assert_allclose(ev2["image_auroc"], ev1["image_auroc"], atol=1e-3)
  # Both processes wrote their data-iterator position into the one committed checkpoint.
  data = runs["two"] / "checkpoints" / str(TOTAL_STEPS) / "data"
  files = sorted(p.name for p in data.iterdir())
  assert files == ["process_0-of-2.json", "process_1-of-2.json"]
  assert (data / files[0]).read_text() == (data / files[1]).read_text()


def test_two_processes_calibrate_like_one_process_with_two_devices(runs):
  """The synthetic validation split scored across 2 processes (batches of 3 padded to 4)
  chooses the thresholds that 1 process with 2 devices chooses."""
  chosen = [json.loads((runs[r] / "eval" / str(TOTAL_STEPS) / "thresholds.json").read_text())
            for r in ("two", "one")]
  assert chosen[0]["validation"]["files"] == chosen[1]["validation"]["files"]
  assert chosen[0]["validation"]["num_images"] == 18
  assert (chosen[0]["validation"]["num_synthetic_anomalous"]
          == chosen[1]["validation"]["num_synthetic_anomalous"] > 0)
  for key in ("image_threshold", "pixel_threshold", "image_min", "image_max"):
    np.testing.assert_allclose(chosen[0][key], chosen[1][key], rtol=1e-3, atol=1e-5,
                               err_msg=key)
  recorded = json.loads((runs["two"] / "validation_files.json").read_text())
  assert recorded["validation"] == chosen[0]["validation"]["files"]
  assert len(recorded["train"]) == 191


def _wait_for(procs, condition, what: str, timeout: float = 400):
  """Polls `condition()` until true; fails if a process exits first or after `timeout` s."""
  start = time.time()
  while not condition():
    for p in procs:
      if p.poll() is not None:
        raise AssertionError(f"exited early with {p.returncode}:\n{p.stdout.read()[-3000:]}")
    assert time.time() - start < timeout, f"timed out waiting for {what}"
    time.sleep(0.05)


def test_sigkill_sigterm_and_another_process_count_then_resume_bit_identically(runs, tmp_path):
  workdir = tmp_path / "killed"
  procs = _start(workdir, 2, every_steps=4)
  _wait_for(procs, lambda: 4 in _steps(workdir), "checkpoint 4")
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  # The survivor loses its peer inside a collective; a scheduler would end it, as here.
  try:
    procs[0].wait(timeout=20)
  except subprocess.TimeoutExpired:
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
  for p in procs:
    p.stdout.close()
  restart_from = _steps(workdir)[-1]
  assert restart_from < TOTAL_STEPS

  # SIGTERM to process 1 alone, once process 0 has logged a step past the checkpoint: both
  # save the same step and exit 143. (Lines the killed run logged past its checkpoint are
  # still in metrics.jsonl: wait for a line of the restarted run.)
  metrics = workdir / "metrics.jsonl"
  stale = set(metrics.read_text().splitlines()) if metrics.is_file() else set()
  step_of = lambda line: int(line.split('"step": ')[1].split(",")[0])
  procs = _start(workdir, 2, every_steps=4)
  _wait_for(procs, lambda: metrics.is_file() and any(
      step_of(l) > restart_from and l not in stale
      for l in metrics.read_text().splitlines() if l.strip()), "the restarted run")
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  if any(p.returncode == 0 for p in procs):
    pytest.fail("training finished before SIGTERM; make the run longer")
  assert [p.returncode for p in procs] == [143, 143], outs[1][-3000:]
  stopped_at = _steps(workdir)[-1]
  assert restart_from < stopped_at < TOTAL_STEPS
  data = workdir / "checkpoints" / str(stopped_at) / "data"
  assert sorted(p.name for p in data.iterdir()) == ["process_0-of-2.json", "process_1-of-2.json"]

  # Another number of processes (1 process with 2 devices): refused with both counts named,
  # before any training step, and nothing in the run changes.
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  done = subprocess.run(_command(workdir, 4), env=_env(2), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]
  assert (f"checkpoint {stopped_at} in {workdir / 'checkpoints'} was written by 2 processes; "
          "this run has 1") in done.stderr
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before

  outs = _finish(_start(workdir, 2, every_steps=4))
  assert all("Resuming from step" in out for out in outs)
  reference, resumed = _final_state(runs["two"]), _final_state(workdir)
  leaves = jax.tree_util.tree_leaves(resumed)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(reference), leaves):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def test_unreachable_coordinator_fails_fast_naming_the_address(tmp_path):
  address = f"127.0.0.1:{_free_port()}"  # Nothing listens there.
  start = time.time()
  done = subprocess.run(
      _command(tmp_path / "w", 4, ["--config.train.distributed=True",
                                   f"--config.train.coordinator_address={address}",
                                   "--config.train.num_processes=2",
                                   "--config.train.process_id=1",
                                   "--config.train.initialization_timeout=3"]),
      env=_env(1), capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-3000:]
  assert f"could not reach the coordinator at {address} within 3 s" in done.stderr
  assert time.time() - start < 60


def test_distributed_setup_precedence_and_errors():
  train = helpers.tiny_config().train
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert parallel.distributed_setup(train, env) == ("10.0.0.2:1234", 4, 3, 300)
  assert parallel.distributed_setup(train, {}) == (None, None, None, 300)  # Auto-detection.
  train.coordinator_address, train.num_processes, train.process_id = "h:99", 2, 0
  assert parallel.distributed_setup(train, env) == ("h:99", 2, 0, 300)
  train.process_id = 2
  with pytest.raises(parallel.ConfigError, match="train.process_id"):
    parallel.distributed_setup(train, {})
  train.process_id, train.coordinator_address = 0, "no-port"
  with pytest.raises(parallel.ConfigError, match="must be host:port"):
    parallel.distributed_setup(train, {})


_SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
          "SLURM_LOCALID": "0"}


def test_item14_coordinator_address_with_ids_from_the_scheduler(monkeypatch):
  """JAX_COORDINATOR_ADDRESS exported by hand in a SLURM job (no JAX_PROCESS_ID): the count
  and the id come from SLURM together with the address, so process 0 knows it is 0."""
  train = helpers.tiny_config().train
  for name, value in _SLURM.items():
    monkeypatch.setenv(name, value)
  for pid in (0, 1):
    monkeypatch.setenv("SLURM_PROCID", str(pid))
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS="127.0.0.1:1234")
    assert parallel.distributed_setup(train, env) == ("127.0.0.1:1234", 2, pid, 300)
  # Values given explicitly still win over the scheduler's.
  env.update(JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
  assert parallel.distributed_setup(train, env) == ("127.0.0.1:1234", 4, 3, 300)
  # Process 0 then serves the coordinator instead of waiting for itself.
  monkeypatch.setenv("SLURM_PROCID", "0")
  address = f"127.0.0.1:{_free_port()}"
  setup = parallel.distributed_setup(train, {"JAX_COORDINATOR_ADDRESS": address})
  assert setup.process_id == 0
  start = time.time()
  parallel.check_coordinator(setup)
  assert time.time() - start < 5


def test_item14_coordinator_address_alone_is_refused_before_waiting(monkeypatch):
  for name in list(_SLURM) + ["SLURM_PROCID", "OMPI_COMM_WORLD_SIZE"]:
    monkeypatch.delenv(name, raising=False)
  train = helpers.tiny_config().train
  with pytest.raises(parallel.ConfigError, match="JAX_PROCESS_ID"):
    parallel.distributed_setup(train, {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
  with pytest.raises(parallel.ConfigError, match="train.process_id"):
    parallel.distributed_setup(train, {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
                                       "JAX_NUM_PROCESSES": "2"})
