"""Training on random crops (data.crop_size): windows, the train step, resume, device count."""

import shutil

import jax
import numpy as np
import pytest

import helpers
from draem_jax import config_lib
from draem_jax import data as data_lib
from draem_jax.data import windows
from draem_jax.errors import ConfigError
from draem_jax.simulation import simulator
from draem_jax.training import parallel
from draem_jax.training import train_step as ts


def test_crop_offsets_shape_range_and_uniform_positions():
  offsets = np.asarray(windows.crop_offsets(jax.random.key(0), (12, 20), (8, 8), 40000))
  assert offsets.shape == (40000, 2) and offsets.dtype == np.int32
  tops, lefts = offsets[:, 0], offsets[:, 1]
  assert tops.min() == 0 and tops.max() == 4 and lefts.min() == 0 and lefts.max() == 12
  # Every position equally likely: each count within 6% of its expectation (>= 8 sigma apart
  # from a distribution that misses one position or favours the centre).
  for values, n in ((tops, 5), (lefts, 13)):
    counts = np.bincount(values, minlength=n)
    np.testing.assert_allclose(counts / len(values), 1.0 / n, rtol=0.06)
  # Top and left are independent: the joint histogram factorises.
  joint = np.histogram2d(tops, lefts, bins=(5, 13))[0] / len(offsets)
  np.testing.assert_allclose(joint, 1.0 / 65, rtol=0.25)


def test_take_windows_cuts_the_drawn_windows():
  images = np.arange(3 * 10 * 12 * 2, dtype=np.float32).reshape(3, 10, 12, 2)
  offsets = np.asarray([[0, 0], [2, 5], [4, 8]], np.int32)
  out = np.asarray(windows.take_windows(images, offsets, (6, 4)))
  for i, (top, left) in enumerate(offsets):
    np.testing.assert_array_equal(out[i], images[i, top:top + 6, left:left + 4])
  crops = np.asarray(windows.random_crops(jax.random.key(1), images, (6, 4)))
  assert crops.shape == (3, 6, 4, 2)
  with pytest.raises(ValueError, match="does not fit"):
    windows.crop_offsets(jax.random.key(0), (10, 12), (12, 4), 1)


def _crop_config(crop=32):
  config = helpers.tiny_config()
  config.data.image_size = (64, 96)
  config.data.crop_size = crop
  config.simulator.rotate_prob = 0.0  # The target is then the crop itself.
  config.train.batch_size = 4
  return config


def _raw_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (4, 64, 96, 3)).astype(np.uint8),
          "texture": rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)}


def _inputs(config, devices, step, batch):
  mesh = parallel.make_mesh(devices)
  fn = jax.jit(lambda s, b: ts.simulated_inputs(config, simulator.simulate, s, b),
               in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))
  return jax.device_get(fn(np.int32(step), parallel.global_batch(batch, mesh)))


def test_train_step_crops_before_the_simulator_the_same_on_one_and_four_devices():
  config, batch = _crop_config(), _raw_batch()
  target, augmented, mask, _ = _inputs(config, jax.devices()[:1], 7, batch)
  assert target.shape == augmented.shape == (4, 32, 32, 3) and mask.shape == (4, 32, 32, 1)
  # The targets are windows of the images at the positions drawn from the step's key.
  _, simulator_key = ts.run_keys(config.train.seed)
  key = jax.random.fold_in(jax.random.fold_in(simulator_key, 7), windows.CROP_SALT)
  offsets = np.asarray(windows.crop_offsets(key, (64, 96), (32, 32), 4))
  for i, (top, left) in enumerate(offsets):
    np.testing.assert_allclose(target[i] * 255.0, batch["image"][i, top:top + 32,
                                                                 left:left + 32], atol=1e-3)
  # Four devices draw the same crops and anomalies; the same step draws them again; another
  # step draws others.
  for a, b in zip((target, augmented, mask),
                  _inputs(config, jax.devices()[:4], 7, batch)[:3]):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_array_equal(target, _inputs(config, jax.devices()[:1], 7, batch)[0])
  assert not np.allclose(target, _inputs(config, jax.devices()[:1], 8, batch)[0])


def test_crop_and_size_config_errors_name_the_field():
  config = helpers.tiny_config()
  for field, value, message in (("image_size", (64, 80), "data.image_size"),
                                ("image_size", (64,), "data.image_size"),
                                ("crop_size", 48, "data.crop_size"),
                                ("crop_size", (64, 64), "data.crop_size"),
                                ("resize", "squash", "data.resize")):
    bad = helpers.tiny_config()
    bad.data.image_size = (32, 64)
    bad.data[field] = value
    with pytest.raises(ConfigError, match=message):
      data_lib.pipeline._check_config(bad)
  config.data.image_size = (32, 64)
  config.data.crop_size = 32
  data_lib.pipeline._check_config(config)
  assert data_lib.train_input_hw(config) == (32, 32) and data_lib.image_hw(config) == (32, 64)
  config.eval.tile_size = 64
  with pytest.raises(ConfigError, match="eval.tile_size"):
    config_lib.validate_config(config)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("crop_data")
  return (helpers.make_folder_dataset(base / "parts", num_train=6, size=72),
          helpers.make_textures(base / "textures"))


def _states(workdir, step):
  from draem_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from draem_jax import models  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(workdir)
  model = models.create_model(config.model)
  tx = ts.make_optimizer(config.optim, config.train.num_steps)
  mesh = parallel.make_mesh()
  abstract = ts.abstract_train_state(model, tx, data_lib.train_input_hw(config), mesh)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints")
  try:
    return jax.device_get(checkpointer.restore(abstract, step=step))
  finally:
    checkpointer.close()


def test_crop_training_resumes_exactly(data_dirs, tmp_path):
  from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top
  root, textures = data_dirs
  config = helpers.tiny_config(root, textures, source="folder")
  config.data.category = "parts"
  config.data.image_size = (64, 32)
  config.data.resize_antialias = True
  config.data.crop_size = 32
  config.train.num_steps = 4
  config.checkpoint.every_steps = 2
  config.checkpoint.max_to_keep = 5
  straight = tmp_path / "straight"
  trainer.train_and_evaluate(config, straight)
  # Resume from step 2: drop the later checkpoint, train again to step 4.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  trainer.train_and_evaluate(config, resumed)
  a, b = _states(straight, 4), _states(resumed, 4)
  assert int(b.step) == 4
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_command_line_gives_a_pair_where_the_config_has_a_side():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  argv = ["train.py", f"--config={helpers.REPO / 'configs' / 'mvtec_cpu.py'}",
          "--config.data.image_size=(256,512)", "--config.data.crop_size=(64,96)",
          "--config.eval.tile_size=128"]
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  config = values.config
  assert config.data.image_size == (256, 512) and config.data.crop_size == (64, 96)
  data_lib.pipeline._check_config(config)
  config_lib.validate_config(config)
  assert data_lib.train_input_hw(config) == (64, 96)
