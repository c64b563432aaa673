"""Rectangular images end to end: train on crops, evaluate on tiles, predict, export, runner.

One tiny odd-sized grayscale folder data set, made here, through every entry point with a
(height, width) data.image_size, an aspect-preserving antialiased resize, training crops and
tiled evaluation.
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import helpers
from draem_jax import inference
from draem_jax.detector import Detector
from draem_jax.deployment import export
from draem_jax.deployment import runner
from draem_jax.image_io import Preprocess
from draem_jax.training import trainer

IMAGE_HW = (32, 64)


def _part(rng, hw, defect=False):
  """A grayscale 'part': a smooth gradient with a bright bar; a defect is a dark blob."""
  h, w = hw
  image = (np.linspace(70, 180, w)[None, :] + np.linspace(0, 30, h)[:, None])
  image[h // 3:h // 3 + 4, :] = 220
  mask = np.zeros(hw, np.uint8)
  if defect:
    y, x = rng.integers(4, h - 10), rng.integers(4, w - 10)
    image[y:y + 6, x:x + 7] = 20
    mask[y:y + 6, x:x + 7] = 255
  noise = rng.normal(0, 3, hw)
  return np.clip(image + noise, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  base = tmp_path_factory.mktemp("rect")
  root = base / "parts"
  rng = np.random.default_rng(0)
  sizes = [(45, 83), (47, 91), (43, 85)]  # Odd, about 1:2, not all alike.
  for split, defect, count in (("train/good", False, 8), ("test/good", False, 2),
                               ("test/dent", True, 2)):
    folder = root / split
    folder.mkdir(parents=True)
    for i in range(count):
      image, mask = _part(rng, sizes[i % 3], defect)
      Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")
      if defect:
        gt = root / "ground_truth" / "dent"
        gt.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(gt / f"{i:03d}_mask.png")
  return root, helpers.make_textures(base / "textures")


@pytest.fixture(scope="module")
def workdir(dataset, tmp_path_factory):
  root, textures = dataset
  config = helpers.tiny_config(root, textures, source="folder")
  config.data.category = "parts"
  config.data.image_size = IMAGE_HW
  config.data.resize = "fit_long_side"
  config.data.resize_antialias = True
  config.data.crop_size = 32
  config.data.validation_fraction = 0.25  # Thresholds from a synthetic split at (32, 64).
  config.data.validation_min_images = 2
  config.eval.batch_size = 4
  config.eval.tile_size = 32
  config.eval.tile_overlap = 0.25
  config.eval.mean_filter_fraction = 21 / 256
  config.eval.write_overlays = False
  out = tmp_path_factory.mktemp("rect_run")
  result = trainer.train_and_evaluate(config, out)
  assert result["num_test_images"] == 4 and np.isfinite(result["pixel_auroc"])
  return out


def test_rectangular_run_end_to_end(dataset, workdir, tmp_path):
  root, _ = dataset
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["image_size"] == list(IMAGE_HW) and saved["data"]["crop_size"] == 32
  assert (workdir / "eval" / "4" / "thresholds.json").is_file()

  # predict.py: maps back at each image's own size.
  images = root / "test"
  records = inference.predict_images(workdir, str(images), tmp_path / "pred")
  assert len(records) == 4
  overlay = Image.open(tmp_path / "pred" / "000.png")
  assert overlay.height >= 45  # The panel shows the image at its own (45 x 83) size.

  # Export at the evaluation resolution (rectangular), with the tiles in the graph.
  paths = export.export_run(workdir, tmp_path / "m.onnx", batch=1)
  meta = json.loads(paths["metadata"].read_text())
  assert meta["image_size"] == list(IMAGE_HW)
  assert meta["input"]["shape"] == [1, *IMAGE_HW, 3]
  assert meta["preprocess"] == {"size": list(IMAGE_HW), "mode": "fit_long_side",
                                "antialias": True}
  assert meta["tiles"] == {"size": [32, 32], "overlap": 0.25}
  assert meta["mean_filter_size"] == 3  # 21/256 of the short side, 32.

  # The JAX-free runner resizes with the same Preprocess and finds predict.py's scores.
  model = runner.Model(paths["onnx"])
  assert model.preprocess == Preprocess(IMAGE_HW, "fit_long_side", True)
  detector = Detector.from_onnx(paths["onnx"])
  assert detector.preprocess == model.preprocess
  got = runner.score_images(detector, runner.find_images(str(images)), tmp_path / "dep")
  want = {r["file"]: r["score"] for r in records}
  for record in got:
    assert record["score"] == pytest.approx(want[record["file"]], abs=1e-4)
  with open(tmp_path / "dep" / "scores.csv") as f:
    assert len(list(csv.DictReader(f))) == 4
  assert Image.open(tmp_path / "dep" / "000.png").size == overlay.size
