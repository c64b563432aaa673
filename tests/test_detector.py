"""draem_jax.Detector: arrays, files, predict.py and the ONNX runner give the same results."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import helpers
import draem_jax
from draem_jax import inference
from draem_jax.deployment import runner
from draem_jax.errors import ConfigError, DataError

BOTTLE = helpers.SHARED_DATA / "mvtec_ad" / "bottle" / "test"


def _inputs(folder):
  """Four bottle images (900x900 RGB) and two odd-sized ones: grayscale 37x53 and RGBA 41x30."""
  folder.mkdir()
  for name in ("broken_large/000.png", "broken_large/001.png", "good/000.png",
               "contamination/002.png"):
    (folder / name.replace("/", "_")).write_bytes((BOTTLE / name).read_bytes())
  crop = np.asarray(Image.open(BOTTLE / "broken_large" / "000.png"))[300:337, 200:253]
  Image.fromarray(crop.mean(-1).astype(np.uint8)).save(folder / "gray_odd.png")
  rgba = np.concatenate([crop[:30, :41], np.full((30, 41, 1), 200, np.uint8)], axis=-1)
  Image.fromarray(rgba).save(folder / "rgba_odd.png")
  return sorted(folder.glob("*.png"))


def test_detector_equals_predict_and_runner(exported_run, tmp_path):
  workdir, onnx_path = exported_run
  paths = _inputs(tmp_path / "in")
  records = inference.predict_images(workdir, str(tmp_path / "in"), tmp_path / "pred")
  runner.main(["--model", str(onnx_path), "--images", str(tmp_path / "in"),
               "--out", str(tmp_path / "dep")])
  read = lambda p: list(csv.DictReader(open(p)))
  deployed = read(tmp_path / "dep" / "scores.csv")
  assert [r["file"] for r in records] == [str(p) for p in paths]
  # Arrays as a user holds them: uint8 RGB, 2-D grayscale, float RGB in [0, 1], RGBA.
  arrays = [np.asarray(Image.open(p)) for p in paths]
  arrays[0] = arrays[0].astype(np.float32) / 255.0
  assert arrays[-2].ndim == 2 and arrays[-1].shape == (30, 41, 4)
  jax_detector = draem_jax.Detector.from_workdir(workdir)
  onnx_detector = draem_jax.Detector.from_onnx(onnx_path)
  assert onnx_detector.fixed_batch and onnx_detector.batch_size == 4
  assert jax_detector.step == onnx_detector.step == helpers.TRAINED_STEPS
  for detector in (jax_detector, onnx_detector):
    results = detector.predict(arrays)
    assert len(results) == len(paths)
    for result, array, record, dep in zip(results, arrays, records, deployed):
      assert result.anomaly_map.shape == array.shape[:2]  # The input's own size.
      assert result.anomaly_map.dtype == np.float32 and result.image.shape[-1] == 3
      for score in (record["score"], float(dep["score"])):
        assert result.score == pytest.approx(score, abs=1e-4)
      assert result.normalized_score == pytest.approx(record["normalized_score"], abs=1e-4)
      assert result.threshold == pytest.approx(record["threshold"], abs=1e-12)
      assert result.is_anomalous == (result.score >= result.threshold)
      assert result.mask.shape == array.shape[:2]
      overlay = result.overlay()
      assert overlay.shape == array.shape[:2] + (3,) and overlay.dtype == np.uint8
  # From files, the JAX detector draws predict.py's very panels.
  results = jax_detector.predict(paths)
  for result, path, record in zip(results, paths, records):
    assert result.record() == record
    np.testing.assert_array_equal(result.panel(),
                                  np.asarray(Image.open(tmp_path / "pred" / path.name)))
  # One image in, one result out; an (N, H, W, 3) array is a batch; encoded bytes work too.
  single = onnx_detector.predict(paths[0].read_bytes())
  assert isinstance(single, draem_jax.Prediction)
  assert single.score == pytest.approx(records[0]["score"], abs=1e-4)
  batch = np.stack([np.asarray(Image.open(p)) for p in paths[:3]])
  scores = [r.score for r in onnx_detector.predict(batch)]
  np.testing.assert_allclose(scores, [r["score"] for r in records[:3]], atol=1e-4)


def test_detector_errors(exported_run, tmp_path):
  _, onnx_path = exported_run
  detector = draem_jax.Detector.from_onnx(onnx_path)
  with pytest.raises(DataError, match="has shape"):
    detector.predict(np.zeros((2, 8, 8, 7), np.uint8))
  with pytest.raises(DataError, match="Cannot read image"):
    detector.predict(b"not an image")
  with pytest.raises(DataError, match="does not exist"):
    detector.predict(tmp_path / "missing.png")
  with pytest.raises(DataError, match="no image"):
    detector.predict([])
  with pytest.raises(DataError, match="does not exist"):
    draem_jax.Detector.from_onnx(tmp_path / "missing.onnx")


def test_import_is_light_and_onnx_detector_needs_no_jax(exported_run):
  _, onnx_path = exported_run
  code = ("import sys, numpy as np, draem_jax; "
          "light = sorted(m for m in sys.modules if m.startswith(('draem_jax.', 'onnxruntime'))); "
          f"d = draem_jax.Detector.from_onnx(r'{onnx_path}'); "
          "r = d.predict(np.zeros((20, 30), np.uint8)); "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')); "
          "print('LIGHT', light); print('JAXMODULES', bad, r.anomaly_map.shape)")
  stdout = helpers.run_python(code)
  assert "LIGHT []" in stdout
  assert "JAXMODULES [] (20, 30)" in stdout


def test_load_config(trained_workdir):
  config = draem_jax.load_config(helpers.REPO / "configs" / "mvtec.py",
                                 {"train.num_steps": 7, "data.image_size": 64})
  assert config.train.num_steps == 7 and config.data.image_size == 64
  assert draem_jax.load_config(f"{helpers.REPO / 'configs' / 'mvtec.py'}:screw").data.category \
      == "screw"
  saved = json.loads((trained_workdir / "config.json").read_text())
  for source in (trained_workdir, trained_workdir / "config.json"):
    assert draem_jax.load_config(source).to_dict() == saved
  with pytest.raises(ConfigError, match="'train.num_stepz'"):
    draem_jax.load_config(trained_workdir, {"train.num_stepz": 7})
  with pytest.raises(ConfigError, match="no group 'trian'"):
    draem_jax.load_config(trained_workdir, {"trian.num_steps": 7})
  with pytest.raises(ConfigError, match="train.num_steps='many'"):
    draem_jax.load_config(trained_workdir, {"train.num_steps": "many"})
  with pytest.raises(ConfigError, match="does not exist"):
    draem_jax.load_config("configs/missing.py")
