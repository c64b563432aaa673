"""Export of a trained run: ONNX and jax.export give the JAX predict function's outputs."""

import json

import jax
import numpy as np
import onnxruntime as ort
import pytest

import helpers
from draem_jax import config_lib
from draem_jax.evaluation import evaluator
from draem_jax.deployment import export
from draem_jax import inference
from draem_jax.data import images as images_lib

BOTTLE = helpers.SHARED_DATA / "mvtec_ad" / "bottle"
STEPS = helpers.TRAINED_STEPS  # conftest's `trained_workdir`.


def _bottle_batch(size, names):
  paths = [BOTTLE / "test" / "broken_large" / n for n in names]
  return np.stack([images_lib.load_image(p, size) for p in paths]).astype(np.float32) / 255.0


def test_onnx_and_jax_export_match_predict(trained_workdir, tmp_path):
  paths = export.export_run(trained_workdir, tmp_path / "m.onnx")
  meta = json.loads(paths["metadata"].read_text())
  saved = json.loads((trained_workdir / "eval" / str(STEPS) / "metrics.json").read_text())
  assert meta["image_size"] == 32 and meta["checkpoint_step"] == STEPS
  assert meta["category"] == "bottle" and meta["input"]["channel_order"] == "RGB"
  assert meta["image_threshold"] == pytest.approx(saved["f1_threshold"])
  assert meta["pixel_threshold"] == pytest.approx(saved["pixel_f1_threshold"])
  run = inference.load_run(trained_workdir)
  predict = jax.jit(evaluator.make_predict_fn(run.model, run.config.eval.mean_filter_size))
  session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
  exported = export.load_jax_export(paths["jax_export"])
  for names in (["000.png"], ["001.png", "002.png", "003.png"]):
    x = _bottle_batch(32, names)
    want_maps, want_scores = (np.asarray(a) for a in predict(jax.device_get(run.variables), x))
    maps, scores = session.run(None, {"image": x})
    assert maps.shape == (len(names), 32, 32) and scores.shape == (len(names),)
    np.testing.assert_allclose(maps, want_maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4, rtol=0)
    jmaps, jscores = (np.asarray(a) for a in exported.call(x))
    np.testing.assert_allclose(jmaps, want_maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(jscores, want_scores, atol=1e-4, rtol=0)
  # The runner scores a dynamic-batch model --batch_size images per session call.
  from draem_jax.deployment import runner
  from draem_jax.detector import Detector
  detector = Detector.from_onnx(paths["onnx"], batch_size=2)
  calls = []
  infer = detector._infer  # pylint: disable=protected-access
  detector._infer = lambda batch: calls.append(len(batch)) or infer(batch)
  files = [BOTTLE / "test" / "broken_large" / f"00{i}.png" for i in range(5)]
  records = runner.score_images(detector, files, tmp_path / "dep", False)
  assert calls == [2, 2, 1] and not records.errors
  x = np.stack([images_lib.load_image(p, 32) for p in files]).astype(np.float32) / 255.0
  np.testing.assert_allclose([r["score"] for r in records], session.run(None, {"image": x})[1],
                             atol=1e-6, rtol=0)


def _op_counts(model_proto) -> dict[str, int]:
  counts = {}
  for node in model_proto.graph.node:
    counts[node.op_type] = counts.get(node.op_type, 0) + 1
  return counts


def test_onnx_graph_keeps_one_layout(trained_workdir, tmp_path):
  # Pooling and upsampling are single MaxPool / Resize nodes (draem_jax.deployment.onnx_ops), so that
  # ONNX Runtime cancels every NHWC<->NCHW transpose but the input's and the output's.
  import onnx
  paths = export.export_run(trained_workdir, tmp_path / "m.onnx")
  counts = _op_counts(onnx.load(str(paths["onnx"])))
  # 4 pools and 4 upsamplings in the reconstructive network, 5 and 5 in the discriminative.
  assert counts["MaxPool"] == 9 and counts["Resize"] == 9
  assert "GatherND" not in counts
  options = ort.SessionOptions()
  options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
  ort.InferenceSession(str(paths["onnx"]), options, providers=["CPUExecutionProvider"])
  assert _op_counts(onnx.load(options.optimized_model_filepath)).get("Transpose", 0) <= 2
  from draem_jax import models
  from draem_jax.deployment import onnx_ops
  # The replacement is in force only while jax2onnx traces.
  assert models.layers.upsample2x_align_corners is not onnx_ops._UPSAMPLE.bind
  assert models.layers._max_pool is not onnx_ops._max_pool_for_onnx


def test_onnx_pool_and_upsample_on_odd_sizes(tmp_path):
  # The ONNX MaxPool drops odd trailing rows/columns as the model's pool does, and Resize
  # interpolates as the model's align-corners upsampling, for sizes the full model never sees.
  from jax2onnx import to_onnx
  from draem_jax import models  # pylint: disable=unused-import
  from draem_jax.deployment import onnx_ops
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  fn = lambda x: (models.layers._max_pool(x), models.layers.upsample2x_align_corners(x))
  proto = to_onnx(fn, inputs=[x.shape], opset=export.ONNX_OPSET)
  assert {"MaxPool", "Resize"} <= set(_op_counts(proto))
  session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  pooled, upsampled = session.run(None, {session.get_inputs()[0].name: x})
  want_pooled, want_upsampled = (np.asarray(a) for a in fn(x))
  assert pooled.shape == (2, 2, 3, 3) and upsampled.shape == (2, 10, 14, 3)
  np.testing.assert_array_equal(pooled, want_pooled)
  np.testing.assert_allclose(upsampled, want_upsampled, atol=1e-6, rtol=0)
  from draem_jax.deployment import quantize
  with pytest.raises(ValueError, match="not those of DRAEM's image-space layers"):
    quantize.float_conv_names(proto, 23)  # A graph without DRAEM's convolutions.


def test_int8_export_has_its_own_thresholds_and_report(trained_workdir, tmp_path):
  import onnx
  from sklearn.metrics import precision_recall_curve, roc_auc_score
  from draem_jax.deployment import runner
  paths = export.export_run(trained_workdir, tmp_path / "m.onnx", int8=True,
                            calibration_images=8)
  assert paths["int8_onnx"].name == "m.int8.onnx"
  meta = json.loads(paths["int8_metadata"].read_text())
  quant, report = meta["quantization"], meta["quantization"]["test_split"]
  assert quant["calibration_images"] == 8 and report["num_images"] == 83
  # The five convolutions into and out of image space (and the mean filter) stay float; all
  # other convolutions take their weights through DequantizeLinear.
  graph = onnx.load(str(paths["int8_onnx"])).graph
  weights = {t.name: tuple(t.dims) for t in graph.initializer}
  convs = [n for n in graph.node if n.op_type == "Conv"]
  float_convs = [n for n in convs if n.input[1] in weights]
  assert sorted(n.name for n in float_convs) == sorted(quant["float_convolutions"])
  # (out, in) channels at widths 4: recon first/last, disc first/last, the mean filter.
  assert sorted(weights[n.input[1]][:2] for n in float_convs) == [
      (1, 1), (2, 4), (3, 4), (4, 3), (4, 6)]
  assert len(convs) - len(float_convs) == 47
  # The report and the thresholds, recomputed with sklearn from both models' test scores.
  files = sorted((BOTTLE / "test").glob("*/*.png"))
  labels = np.array([p.parent.name != "good" for p in files])
  x = np.stack([images_lib.load_image(p, 32) for p in files]).astype(np.float32) / 255.0
  scores = {}
  for kind, path in (("float", paths["onnx"]), ("int8", paths["int8_onnx"])):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores[kind] = session.run(None, {"image": x})[1]
    assert report[kind]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores[kind]),
                                                        abs=1e-9)
  assert meta["image_threshold"] == pytest.approx(helpers.sklearn_f1_threshold(
      labels, scores["int8"]), abs=1e-7)
  assert "8-bit" in meta["threshold_source"]
  float_meta = json.loads(paths["metadata"].read_text())
  assert meta["image_threshold"] != float_meta["image_threshold"]
  assert report["max_score_difference"] == pytest.approx(
      np.abs(scores["int8"] - scores["float"]).max(), abs=1e-7)
  changed = ((scores["float"] >= float_meta["image_threshold"])
             != (scores["int8"] >= meta["image_threshold"])).sum()
  assert report["decisions_changed"] == changed
  # The runner reads the 8-bit model's own metadata.
  assert runner.Model(paths["int8_onnx"]).threshold == meta["image_threshold"]
  # Full-range int8 weights, or 7-bit ones for CPUs without VNNI.
  reduced = export.export_run(trained_workdir, tmp_path / "r.onnx", int8=True,
                              calibration_images=4, int8_reduce_range=True)
  assert "7-bit" in json.loads(reduced["int8_metadata"].read_text())["quantization"]["weights"]
  assert "full range" in quant["weights"]
  for path, low, high in ((paths["int8_onnx"], -127, 127), (reduced["int8_onnx"], -64, 64)):
    ints = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert ints and min(w.min() for w in ints) >= low and max(w.max() for w in ints) <= high
    assert max(np.abs(w.astype(int)).max() for w in ints) > high - 2  # The range is used.


def test_int8_export_without_the_training_images_writes_nothing(trained_workdir, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["root"] = str(tmp_path / "moved")
  config["data"]["tfds_data_dir"] = str(tmp_path / "moved_tfds")
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(export.DataError, match="--int8 calibrates on the run's training images"):
    export.export_run(workdir, tmp_path / "out" / "m.onnx", int8=True)
  assert not (tmp_path / "out").exists()


def test_export_of_an_alternative_image_score(trained_workdir, tmp_path):
  # A run trained with eval.image_score="minus_median": the median (a sort) converts too.
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["eval"]["image_score"] = "minus_median"
  (workdir / "config.json").write_text(json.dumps(config))
  # A fixed batch of 3: the 8-bit model is calibrated and scored in (padded) batches of 3.
  paths = export.export_run(workdir, tmp_path / "m.onnx", batch=3, int8=True,
                            calibration_images=4)
  assert json.loads(paths["metadata"].read_text())["image_score"] == "minus_median"
  int8_meta = json.loads(paths["int8_metadata"].read_text())
  assert int8_meta["image_score"] == "minus_median" and int8_meta["input"]["shape"][0] == 3
  assert int8_meta["quantization"]["test_split"]["num_images"] == 83  # 27 batches + 2 images.
  import onnx
  from draem_jax.deployment import quantize
  assert quantize.fixed_batch(onnx.load(str(paths["int8_onnx"]))) == 3
  run = inference.load_run(workdir)
  x = _bottle_batch(32, ["001.png", "002.png", "003.png"])
  maps, want = (np.asarray(a) for a in jax.jit(evaluator.predict_fn_for(
      run.model, run.config.eval))(jax.device_get(run.variables), x))
  np.testing.assert_allclose(want, np.asarray(evaluator.image_score(maps, 21, "minus_median")))
  session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
  _, scores = session.run(None, {"image": x})
  np.testing.assert_allclose(scores, want, atol=1e-4, rtol=0)
  assert not np.allclose(want, np.asarray(evaluator.image_score(maps, 21, "paper")))


def test_export_errors(tmp_path):
  config_lib.save_config(helpers.tiny_config(), tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export.export_run(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    export.export_run(tmp_path / "missing")
  with pytest.raises(export.ConfigError, match="--batch"):
    export.export_run(tmp_path, batch="zero")
  with pytest.raises(export.ConfigError, match="--calibration_images=0"):
    export.export_run(tmp_path, int8=True, calibration_images=0)


def _threshold_between(scores):
  """The midpoint of the widest gap between sorted scores: a threshold no score is near."""
  s = np.sort(np.asarray(scores, np.float64))
  i = int(np.argmax(np.diff(s)))
  # Else the comparison would test rounding only (ONNX vs JAX scores differ by ~5e-7).
  assert s[i + 1] - s[i] > 1e-5, s
  return float((s[i] + s[i + 1]) / 2)


def test_runner_matches_predict_and_imports_no_jax(trained_workdir, tmp_path):
  # A model exported with a fixed batch of 4 scores 6 images (one batch padded); one more file
  # cannot be read: both predict.py and the runner score the rest and list it in errors.csv.
  import csv
  import subprocess
  import sys
  from draem_jax.deployment import runner
  workdir = helpers.copy_with_validation_stats(trained_workdir, tmp_path / "run")
  paths = export.export_run(workdir, tmp_path / "m.onnx", batch=4)
  assert json.loads(paths["metadata"].read_text())["normalization"]["image_max"] == 0.75
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  for name in ("000.png", "001.png", "002.png", "003.png"):
    (inputs / name).write_bytes((BOTTLE / "test" / "broken_large" / name).read_bytes())
  (inputs / "002b.png").write_bytes(b"not a PNG")  # Sorted between the readable ones.
  for name in ("000.png", "001.png"):
    (inputs / f"good{name}").write_bytes((BOTTLE / "test" / "good" / name).read_bytes())
  first = inference.predict_images(workdir, str(inputs), tmp_path / "pred0",
                                   write_overlays=False)
  assert [e["file"] for e in first.errors] == [str(inputs / "002b.png")] and len(first) == 6
  assert "Cannot read image" in first.errors[0]["error"]
  # A threshold between the scores: some images on each side, none within rounding of it.
  threshold = _threshold_between([r["score"] for r in first])
  inference.predict_images(workdir, str(inputs), tmp_path / "pred", threshold=threshold,
                           write_overlays=False)
  code = ("import sys; from draem_jax.deployment import runner; "
          f"rc = runner.main(['--model', r'{paths['onnx']}', '--images', r'{inputs}', "
          f"'--out', r'{tmp_path / 'dep'}', '--threshold', '{threshold!r}']); "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')); "
          "print('JAXMODULES', bad); sys.exit(rc)")
  done = subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-3000:]  # Non-zero: a file was not scored.
  assert "JAXMODULES []" in done.stdout
  assert "6 images scored" in done.stdout and "1 could not be read" in done.stdout
  read = lambda p: list(csv.DictReader(open(p)))
  for out in ("pred", "dep"):
    assert [r["file"] for r in read(tmp_path / out / "errors.csv")] == [str(inputs / "002b.png")]
  want, got = read(tmp_path / "pred" / "scores.csv"), read(tmp_path / "dep" / "scores.csv")
  assert list(got[0]) == list(want[0])  # Same columns, normalized_score included.
  assert [r["file"] for r in got] == [r["file"] for r in want]
  assert len(got) == 6 and json.loads((tmp_path / "dep" / "scores.json").read_text()) != []
  assert {r["anomalous"] for r in want} == {"True", "False"}
  for g, w in zip(got, want):
    assert float(g["score"]) == pytest.approx(float(w["score"]), abs=1e-4)
    assert float(g["normalized_score"]) == pytest.approx(float(w["normalized_score"]), abs=1e-4)
    assert float(g["threshold"]) == pytest.approx(float(w["threshold"]), abs=1e-12)
    assert g["anomalous"] == w["anomalous"], (g, w)
  assert (tmp_path / "dep" / "000.png").is_file()

  model = runner.Model(paths["onnx"])
  with pytest.raises(runner.DataError, match="must be"):
    model(np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(runner.DataError, match="must be"):
    model(np.zeros((1, 32, 32, 1), np.float32))
  # A fixed batch of 4: the detector pads 6 images to two calls of 4 (checked above: same
  # scores as predict.py).
  from draem_jax.detector import Detector
  assert Detector.from_onnx(paths["onnx"]).batch_size == 4
  corrupt = tmp_path / "corrupt.onnx"
  corrupt.write_bytes(paths["onnx"].read_bytes()[:1000])
  corrupt.with_suffix(".json").write_text(paths["metadata"].read_text())
  with pytest.raises(runner.DataError, match="not a readable ONNX"):
    runner.Model(corrupt)
  # A corrupt model.json: one clear error naming it, not a JSONDecodeError.
  broken = tmp_path / "broken.onnx"
  broken.write_bytes(paths["onnx"].read_bytes())
  broken.with_suffix(".json").write_text(paths["metadata"].read_text()[:50])
  with pytest.raises(runner.DataError, match=r"broken.json is not the metadata export.py"):
    runner.Model(broken)
  # --out naming an existing file: a clear error before any model is loaded.
  taken = tmp_path / "taken.csv"
  taken.write_text("keep me")
  assert runner.main(["--model", str(broken), "--images", str(inputs), "--out", str(taken)]) == 2
  with pytest.raises(inference.ConfigError, match="--out .*taken.csv is an existing file"):
    inference.predict_images(tmp_path / "no_such_run", str(inputs), taken)
  assert taken.read_text() == "keep me"



def _copy_with_config(workdir, dest, **changes):
  """A copy of the run with config.json fields changed ({'group.field': value})."""
  import shutil
  shutil.copytree(workdir, dest)
  config = json.loads((dest / "config.json").read_text())
  for field, value in changes.items():
    group, name = field.split(".")
    config[group][name] = value
  (dest / "config.json").write_text(json.dumps(config))
  return dest


def test_export_and_predict_choose_the_same_thresholds_without_thresholds_json(
    trained_workdir, tmp_path):
  # A run holding out a validation split whose checkpoint has no thresholds.json (an
  # intermediate step, a run stopped before its final evaluation): export.py chooses them on
  # the validation split as predict.py does, not the test split's F1-max.
  workdir = _copy_with_config(trained_workdir, tmp_path / "run",
                              **{"data.validation_fraction": 0.1})
  eval_dir = workdir / "eval" / str(STEPS)
  assert not (eval_dir / "thresholds.json").exists()
  paths = export.export_run(workdir, tmp_path / "m.onnx")
  meta = json.loads(paths["metadata"].read_text())
  chosen = json.loads((eval_dir / "thresholds.json").read_text())  # Written, as predict.py.
  assert meta["image_threshold"] == chosen["image_threshold"]
  assert meta["pixel_threshold"] == chosen["pixel_threshold"]
  assert "validation split" in meta["threshold_source"]
  assert meta["normalization"]["image_max"] == chosen["image_max"]
  f1 = json.loads((eval_dir / "metrics.json").read_text())["f1_threshold"]
  assert meta["image_threshold"] != f1
  run = inference.load_run(workdir)
  assert inference.run_thresholds(run, workdir)["image_threshold"] == meta["image_threshold"]
  records = inference.predict_images(workdir, str(BOTTLE / "test" / "good" / "000.png"),
                                     tmp_path / "pred", write_overlays=False)
  assert records[0]["threshold"] == meta["image_threshold"]


def test_bfloat16_run_exports_float32_onnx_that_onnxruntime_runs(trained_workdir, tmp_path):
  import onnx
  workdir = _copy_with_config(trained_workdir, tmp_path / "run", **{"model.dtype": "bfloat16"})
  paths = export.export_run(workdir, tmp_path / "m.onnx", int8=True, calibration_images=4)
  graph = onnx.load(str(paths["onnx"])).graph
  assert not [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16]
  meta = json.loads(paths["metadata"].read_text())
  assert meta["compute_dtype"] == "float32" and meta["trained_dtype"] == "bfloat16"
  # The float32 network of the same parameters.
  run = inference.load_run(trained_workdir)
  x = _bottle_batch(32, ["001.png", "002.png"])
  _, want = (np.asarray(a) for a in jax.jit(evaluator.make_predict_fn(run.model, 21))(
      jax.device_get(run.variables), x))
  for path in (paths["onnx"], paths["int8_onnx"]):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, scores = session.run(None, {"image": x})
    np.testing.assert_allclose(scores, want, atol=1e-4 if path == paths["onnx"] else 0.1)


def test_int8_export_of_a_p99_run_and_nothing_half_written_on_failure(trained_workdir, tmp_path,
                                                                     monkeypatch):
  # eval.image_score='p99' has no mean filter: the layers kept float are told by what they
  # are, not by their position.
  import onnx
  from draem_jax.deployment import quantize
  workdir = _copy_with_config(trained_workdir, tmp_path / "run", **{"eval.image_score": "p99"})
  paths = export.export_run(workdir, tmp_path / "m.onnx", int8=True, calibration_images=4)
  meta = json.loads(paths["int8_metadata"].read_text())
  graph = onnx.load(str(paths["int8_onnx"])).graph
  weights = {t.name: tuple(t.dims) for t in graph.initializer}
  float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
  assert sorted(n.name for n in float_convs) == sorted(meta["quantization"]["float_convolutions"])
  assert sorted(weights[n.input[1]][:2] for n in float_convs) == [(2, 4), (3, 4), (4, 3), (4, 6)]
  assert meta["image_score"] == "p99"
  # A failure in the 8-bit stage leaves what was there and writes nothing new.
  out = tmp_path / "again"
  out.mkdir()
  (out / "m.onnx").write_bytes(b"an earlier export")

  def fail(*args, **kwargs):
    raise RuntimeError("quantizer failed")

  monkeypatch.setattr(quantize, "quantize", fail)
  with pytest.raises(RuntimeError, match="quantizer failed"):
    export.export_run(workdir, out / "m.onnx", int8=True, calibration_images=4)
  assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]
  assert (out / "m.onnx").read_bytes() == b"an earlier export"
