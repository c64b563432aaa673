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
