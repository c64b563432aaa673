"""Test setup: four virtual CPU devices so data-parallel code runs as on a multi-device host.

Must run before JAX initialises its backends, hence here and at import time.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# The suite is dominated by XLA compile time of tiny networks, not by running them: LLVM's
# cheapest optimisation level halves compile time (and is inherited by subprocesses).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_backend_optimization_level=0").strip()

# A persistent compilation cache, fresh for each session (every test still compiles what it
# is the first to need) and inherited by the train.py / evaluate.py / predict.py subprocesses
# that the end-to-end and resume tests start: they compile the same functions again and again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="draem_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

import jax  # pylint: disable=g-import-not-at-top
import pytest

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """The real MVTec AD bottle / DTD data beside the repository (never copied into it)."""
  if not SHARED_DATA.is_dir():
    raise FileNotFoundError(f"real test data not found at {SHARED_DATA}; it must sit beside the "
                            "repository as ../shared/data")
  return SHARED_DATA


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> Path:
  """One tiny run (`helpers.tiny_config`, 32x32, widths 4, TRAINED_STEPS steps, evaluated) that
  the export, Detector and server tests share: trained once per session."""
  import helpers  # pylint: disable=g-import-not-at-top
  from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("trained_run")
  config = helpers.tiny_config()
  config.train.num_steps = helpers.TRAINED_STEPS
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.eval.write_overlays = False
  trainer.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="session")
def exported_run(trained_workdir, tmp_path_factory) -> tuple[Path, Path]:
  """(workdir, model.onnx): a copy of `trained_workdir` with validation statistics (so that
  scores are normalised too) and its ONNX export with a fixed batch of 4, shared by the
  Detector and server tests."""
  import helpers  # pylint: disable=g-import-not-at-top
  from draem_jax.deployment import export  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("exported_run")
  workdir = helpers.copy_with_validation_stats(trained_workdir, root / "run")
  paths = export.export_run(workdir, root / "model.onnx", batch=4)
  return workdir, paths["onnx"]


# The session's trained run is built once per worker process that asks for it: its users share
# one worker (pytest.ini's `--dist loadgroup`).
SHARED_RUN_FIXTURES = {"trained_workdir", "exported_run"}


def pytest_collection_modifyitems(items):
  for item in items:
    if SHARED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.xdist_group("trained_run"))
