"""Default behaviour pinned: the simulator's output and one train step on fixed keys.

tests/data/golden_defaults.npz was written by this file (`python tests/test_golden.py --write`,
under the suite's XLA settings from conftest.py) from the default configs/mvtec.py before the ablation switches existed;
every later change must leave the defaults' numbers as they were. Masks and has_anomaly are
compared exactly; float outputs to 1e-6 (exact on the 2-core x86 CPU that wrote the file; the
margin allows another CPU's vector width to round a bilinear weight differently).
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # Run as a script: the packages import as under `python -m pytest`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import mvtec
from draem_jax import models
from draem_jax.simulation import simulator
from draem_jax.training import parallel
from draem_jax.training import train_step as ts

GOLDEN = Path(__file__).parent / "data" / "golden_defaults.npz"


def _inputs(batch=6, size=24):
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  textures = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  return images, textures


def simulator_outputs() -> dict[str, np.ndarray]:
  images, textures = _inputs()
  out = {}
  for mode, keys in (("map", 2), ("vmap", 1)):
    cfg = mvtec.get_config().simulator
    cfg.batching = mode
    for k in range(keys):
      sim = jax.jit(simulator.simulate, static_argnums=3)(
          jax.random.key(100 + k), images, textures, simulator.SimulatorConfig.from_config(cfg))
      for name, value in sim._asdict().items():
        out[f"sim_{mode}_{k}_{name}"] = np.asarray(value)
  return out


def train_step_outputs() -> dict[str, np.ndarray]:
  config = mvtec.get_config()
  config.model.recon_width = 4
  config.model.disc_width = 4
  config.train.batch_size = 4
  images, textures = _inputs(4, 32)
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.create_model(config.model)
  tx = ts.make_optimizer(config.optim, 100)
  state = ts.create_train_state(ts.run_keys(0)[0], model, tx, (32, 32), mesh)
  step = ts.jit_train_step(ts.make_train_step(model, tx, config, simulator.simulate), mesh)
  batch = parallel.global_batch({"image": images, "texture": textures}, mesh)
  out = {}
  for i in range(2):
    state, metrics = step(state, batch)
    for name, value in metrics.items():
      out[f"step{i}_{name}"] = np.asarray(value)
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  for path, leaf in leaves[:6]:
    out["param_" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  out["param_sum"] = np.asarray(sum(float(np.sum(np.abs(x))) for _, x in leaves))
  return out


def _compare(actual: dict[str, np.ndarray]):
  golden = np.load(GOLDEN)
  assert set(actual) <= set(golden.files), sorted(set(actual) - set(golden.files))
  for name, value in actual.items():
    if name.endswith(("_mask", "_has_anomaly")):
      np.testing.assert_array_equal(value, golden[name], err_msg=name)
    else:
      np.testing.assert_allclose(value, golden[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_default_simulator_unchanged():
  _compare(simulator_outputs())


def test_default_train_step_unchanged():
  _compare(train_step_outputs())


def write_golden(path: Path = GOLDEN):
  """Rewrites the pinned outputs; only for a deliberate change of the defaults."""
  out = {**simulator_outputs(), **train_step_outputs()}
  if not any(v.any() for k, v in out.items() if k.endswith("_has_anomaly")):
    raise AssertionError("no anomaly was simulated; the golden file would pin nothing")
  np.savez_compressed(path, **out)


if __name__ == "__main__":
  # The suite's XLA settings (conftest.py at import) and the repository on the path, as pytest
  # has them: other compiler settings round the train step differently.
  import conftest  # pylint: disable=g-import-not-at-top,unused-import
  if sys.argv[1:] != ["--write"]:
    sys.exit("usage: python tests/test_golden.py --write   (rewrites " + str(GOLDEN) + ")")
  write_golden()
