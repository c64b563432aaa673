"""Evaluation, calibration and prediction for any number of images on any number of devices.

The suite runs on four virtual CPU devices (conftest.py); eval.batch_size 6, 3 and 2 do not
split over them, so their batches are padded to a multiple of 4 and the pad rows dropped.
"""

import jax
import numpy as np
import pytest

import helpers
from draem_jax import config_lib
from draem_jax import inference
from draem_jax import models
from draem_jax.data import images as images_lib
from draem_jax.data import padding
from draem_jax.evaluation import evaluator
from draem_jax.evaluation import validation
from draem_jax.training import checkpointing
from draem_jax.training import parallel
from draem_jax.training import train_step


def test_item1_padded_batch_size_and_rows():
  assert [padding.padded_batch_size(b, 4) for b in (1, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
  assert padding.padded_batch_size(8, 16) == 16 and padding.padded_batch_size(7, 1) == 7
  rows = padding.batch_indices(7, 4)
  assert [r.tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, -1]]
  # Two processes: each its half of every global batch, in process order.
  halves = [padding.batch_indices(7, 4, p, 2) for p in range(2)]
  assert [h.tolist() for h in halves[0]] == [[0, 1], [4, 5]]
  assert [h.tolist() for h in halves[1]] == [[2, 3], [6, -1]]
  x = np.arange(1, 8, dtype=np.float32).reshape(7, 1) * np.ones((1, 2), np.float32)
  np.testing.assert_array_equal(padding.take_rows(x, rows[1]), [[5, 5], [6, 6], [7, 7], [0, 0]])
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    padding.batch_indices(7, 4, 0, 3)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
  """A tiny run with freshly initialised networks on the 4 devices: config.json, checkpoint 1."""
  workdir = tmp_path_factory.mktemp("untrained")
  config = helpers.tiny_config()
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.eval.write_overlays = False
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 4
  model = models.create_model(config.model)
  tx = train_step.make_optimizer(config.optim, total_steps=4)
  state = train_step.create_train_state(jax.random.key(0), model, tx, (32, 32), mesh)
  config_lib.save_config(config, workdir)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints")
  checkpointer.save(1, state)
  checkpointer.close()
  return {"config": config, "variables": state.variables(), "model": model, "mesh": mesh,
          "workdir": workdir}


def _with_batch(config, batch_size):
  out = config_lib.ml_collections.ConfigDict(config.to_dict())
  out.eval.batch_size = batch_size
  return out


def _scores(path):
  lines = path.read_text().splitlines()[1:]
  return np.array([float(line.split(",")[3]) for line in lines])


def test_item1_evaluation_of_any_batch_size_on_four_devices(untrained, tmp_path):
  """83 test images in batches of 6 (padded to 8; the last holds 3 images) score as in
  batches of 4, each image once."""
  results = {}
  for batch in (4, 6):
    results[batch] = evaluator.evaluate(
        _with_batch(untrained["config"], batch), untrained["variables"], untrained["model"],
        untrained["mesh"], tmp_path / str(batch), step=1)
  assert results[6]["num_test_images"] == results[4]["num_test_images"] == 83
  for key in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"):
    assert results[6][key] == pytest.approx(results[4][key], abs=1e-5), key
  np.testing.assert_allclose(_scores(tmp_path / "6" / "scores.csv"),
                             _scores(tmp_path / "4" / "scores.csv"), atol=2e-6)


def test_item1_calibrate_of_any_batch_size_on_four_devices(tmp_path, untrained):
  """The synthetic validation split (8 images: 4 clean, 4 simulated) in batches of 3 (padded
  to 4, two batches) chooses the thresholds that one batch of 8 does."""
  config = helpers.tiny_config(helpers.make_folder_dataset(tmp_path / "data", num_train=12),
                               helpers.make_textures(tmp_path / "tex"), source="folder")
  config.data.category = "parts"
  config.data.validation_fraction = 0.25
  chosen = {b: validation.calibrate(_with_batch(config, b), untrained["variables"],
                                    untrained["model"], untrained["mesh"], None, step=1)
            for b in (3, 8)}
  assert chosen[3]["validation"]["num_images"] == 4
  for key in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_max"):
    assert chosen[3][key] == pytest.approx(chosen[8][key], abs=1e-6), key


def test_item1_predict_of_any_batch_size_on_four_devices(untrained, tmp_path):
  """5 images with eval.batch_size 2 (padded to 4: a batch of 4, then 1 image and 3 pad rows)
  score as one batch of the predict function does."""
  workdir = untrained["workdir"]
  config = _with_batch(untrained["config"], 2)
  config_lib.save_config(config, workdir)
  files = sorted((helpers.SHARED_DATA / "mvtec_ad" / "bottle" / "test" / "good").glob("*.png"))
  images = tmp_path / "images"
  images.mkdir()
  for f in files[:5]:
    (images / f.name).write_bytes(f.read_bytes())
  records = inference.predict_images(workdir, str(images), tmp_path / "out", threshold=0.5,
                                     write_overlays=False)
  assert [r["file"] for r in records] == [str(images / f.name) for f in files[:5]]
  batch = np.zeros((8, 32, 32, 3), np.uint8)
  batch[:5] = [images_lib.resize_bilinear(images_lib.load_image(f), 32) for f in files[:5]]
  predict = evaluator.jit_predict_fn(evaluator.predict_fn_for(untrained["model"], config.eval),
                                     untrained["mesh"])
  _, want = predict(untrained["variables"], batch)
  np.testing.assert_allclose([r["score"] for r in records], np.asarray(want)[:5], atol=2e-6)
