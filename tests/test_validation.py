"""Normal-only workflow: the held-out validation split, its thresholds, normalised scores, and
folder mask-name patterns."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import helpers
from draem_jax.evaluation import evaluator
from draem_jax.evaluation import metrics
from draem_jax.training import trainer
from draem_jax.evaluation import validation
from draem_jax.data import folder
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError, DataError


def _distinct_folder(root, n=12, size=32):
  """train/good of n images, each a different flat colour (so a batch row names its image)."""
  good = root / "train" / "good"
  good.mkdir(parents=True)
  for i in range(n):
    Image.fromarray(np.full((size, size, 3), 10 + 20 * i, np.uint8)).save(good / f"{i:03d}.png")
  return root


def _folder_config(tmp_path, n=12, fraction=0.25):
  config = helpers.tiny_config(_distinct_folder(tmp_path / "data", n),
                               helpers.make_textures(tmp_path / "tex"), source="folder")
  config.data.category = "parts"
  config.data.validation_fraction = fraction
  return config


def test_validation_images_never_reach_training(tmp_path):
  config = _folder_config(tmp_path)
  names = [f"train/good/{i:03d}.png" for i in range(12)]
  train, held_out = pipeline.holdout_indices(names, config)
  # Held out: the SHA-256 of the name, as a fraction, below 0.25 (computed independently).
  keys = [int(hashlib.sha256(n.encode()).hexdigest()[:16], 16) / 2**64 for n in names]
  assert held_out.tolist() == [i for i, k in enumerate(keys) if k < 0.25] == [2, 5, 6, 7]
  assert sorted(train.tolist() + held_out.tolist()) == list(range(12))
  assert pipeline.num_train_examples(config) == 8
  train_names = pipeline.open_split(config, "train").file_names
  val_names = pipeline.open_split(config, "validation").file_names
  assert val_names == [f"train/good/{i:03d}.png" for i in (2, 5, 6, 7)]
  assert not set(train_names) & set(val_names) and len(train_names) == 8
  # Three epochs of the real pipeline: every row is a training image, each flat colour
  # 10 + 20 i names image i.
  it = pipeline.make_train_iterator(config)
  seen = {int((batch["image"][j, 0, 0, 0] - 10) // 20) for batch in (next(it) for _ in range(6))
          for j in range(4)}
  assert seen == set(train.tolist())
  # At least validation_min_images, and never all of the images.
  config.data.validation_fraction = 0.01
  assert pipeline.holdout_indices(names, config)[1].tolist() == sorted(np.argsort(keys)[:4])
  config.data.validation_min_images = 12
  with pytest.raises(DataError, match="data.validation_fraction=0.01 holds out 12 of the 12"):
    pipeline.validate_data_config(config, require_test=False)
  config.data.validation_fraction = 1.0
  with pytest.raises(ConfigError, match=r"data.validation_fraction=1.0 must be in \[0, 1\)"):
    pipeline.validate_data_config(config, require_test=False)


def test_thresholds_and_normalisation_on_a_hand_computed_split():
  # Six images, three with an anomaly. Image F1 by threshold (score >= t), worked by hand:
  # t=0.9: P 1, R 1/3, F1 0.5; t=0.8: P 1, R 2/3, F1 0.8; t=0.4: 2/3; t=0.35: 0.571;
  # t=0.3: 0.75; t=0.1: 0.667. So the F1-max threshold is 0.8.
  labels = np.array([0, 0, 0, 1, 1, 1])
  scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
  # Two pixels per image; the first pixel of each anomalous image is the defect. Every defect
  # pixel (0.9, 0.6, 0.7) is above every normal pixel (at most 0.5): pixel F1 is 1 at 0.6.
  masks = np.zeros((6, 1, 2))
  masks[3:, 0, 0] = 1
  maps = np.array([[0.2, 0.1], [0.3, 0.2], [0.1, 0.1], [0.9, 0.2], [0.6, 0.5],
                   [0.7, 0.1]]).reshape(6, 1, 2)
  chosen = validation.choose_thresholds(labels, scores, masks, maps, method="f1")
  assert chosen["image_threshold"] == chosen["base_image_threshold"] == 0.8
  assert chosen["pixel_threshold"] == 0.6
  assert (chosen["image_min"], chosen["image_max"]) == (0.1, 0.9)
  assert (chosen["pixel_min"], chosen["pixel_max"]) == (0.1, 0.9)
  # Normalised: (score - 0.8) / 0.8 + 0.5, clipped to [0, 1]: 0.4 and below read 0.
  np.testing.assert_allclose(validation.normalize(chosen, scores),
                             [0.0, 0.0, 0.0, 0.5, 0.0, 0.625], atol=1e-12)
  assert validation.normalize(chosen, np.float64(0.6)) == pytest.approx(0.25, abs=1e-12)
  # Sensitivity 0.7 lowers the threshold by 0.2 of the range 0.8: to 0.64, where the normalised
  # score is 0.3.
  high = validation.with_sensitivity(chosen, 0.7)
  assert high["image_threshold"] == pytest.approx(0.64, abs=1e-12)
  assert high["pixel_threshold"] == pytest.approx(0.6 - 0.2 * 0.8, abs=1e-12)
  assert validation.normalize(chosen, np.float64(0.64)) == pytest.approx(0.3, abs=1e-12)
  with pytest.raises(ConfigError, match="sensitivity=1.0"):
    validation.with_sensitivity(chosen, 1.0)
  # At most a third of the normal images (1 of 3) and of their pixels (2 of 6) flagged: just
  # above the 2nd highest normal score 0.35 (only 0.4 stays above) and just above the 3rd
  # highest normal pixel 0.2 (only 0.3 stays above: the tie at 0.2 stays below).
  by_fpr = validation.choose_thresholds(labels, scores, masks, maps, method="fpr",
                                        target_fpr=1 / 3)
  assert by_fpr["image_threshold"] == np.nextafter(0.35, np.inf)
  assert by_fpr["pixel_threshold"] == np.nextafter(0.2, np.inf)
  # Test-split metrics at the F1 thresholds, by hand: images 0.8 and 0.9 flagged (both
  # anomalous), 0.3 missed; pixels 0.9, 0.6, 0.7 flagged, all defects.
  got = evaluator.threshold_metrics(labels, scores, masks > 0.5, maps, chosen)
  assert got["image_precision"] == 1.0 and got["image_recall"] == pytest.approx(2 / 3)
  assert got["image_fpr"] == 0.0 and got["image_accuracy"] == pytest.approx(5 / 6)
  assert got["image_f1"] == pytest.approx(0.8)
  assert got["pixel_precision"] == 1.0 and got["pixel_recall"] == 1.0
  assert got["pixel_f1"] == 1.0


def _mask_layout(root, pattern, mask_root):
  for i in range(3):
    Image.fromarray(np.full((24, 32, 3), 50 * i, np.uint8)).save(
        _mkdir(root / "train" / "good") / f"{i}.png")
  Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(_mkdir(root / "test" / "good") / "g.png")
  for stem in ("a", "b"):
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(_mkdir(root / "test" / "ko") /
                                                           f"{stem}.bmp")
    mask = np.zeros((24, 32), np.uint8)
    mask[2:6, 3:9] = 255
    Image.fromarray(mask).save(_mkdir(mask_root / "ko") / pattern.format(stem=stem))


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


@pytest.mark.parametrize("pattern,separate_root", [("{stem}_mask.png", False),
                                                   ("{stem}.png", True),
                                                   ("{stem}_label.bmp", True)])
def test_mask_name_patterns(tmp_path, pattern, separate_root):
  root = tmp_path / "data"
  mask_root = tmp_path / "masks" if separate_root else root / "ground_truth"
  _mask_layout(root, pattern, mask_root)
  config = helpers.tiny_config(root, helpers.make_textures(tmp_path / "tex"), source="folder")
  config.data.mask_pattern = pattern
  config.data.mask_root = str(mask_root) if separate_root else ""
  config.eval.batch_size = 4
  pipeline.validate_data_config(config)
  ev = pipeline.make_eval_dataset(config)
  assert ev.has_masks and list(ev.file_names) == ["test/good/g.png", "test/ko/a.bmp",
                                                  "test/ko/b.bmp"]
  batch = next(iter(ev))
  assert batch["mask"][0].max() == 0 and batch["mask"][1].max() == 1.0
  # A mask that matches no image is named in the error.
  orphan = mask_root / "ko" / pattern.format(stem="zz")
  shutil.copy(mask_root / "ko" / pattern.format(stem="a"), orphan)
  with pytest.raises(DataError, match=rf"Mask {orphan} matches no image"):
    pipeline.validate_data_config(config)
  orphan.unlink()
  # A file in the mask folder not following the pattern.
  stray = mask_root / "ko" / "a_other.tif"
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(stray)
  if not folder._mask_regex(pattern).match(stray.name):  # pylint: disable=protected-access
    with pytest.raises(DataError, match=rf"Mask {stray} does not match data.mask_pattern"):
      pipeline.validate_data_config(config)


def test_bad_mask_patterns_are_config_errors(tmp_path):
  config = helpers.tiny_config(tmp_path, tmp_path, source="folder")
  for bad in ("mask.png", "{stem}_{stem}.png", "{name}.png", "{stem}.txt", "sub/{stem}.png"):
    config.data.mask_pattern = bad
    with pytest.raises(ConfigError, match="data.mask_pattern"):
      pipeline.validate_data_config(config)


def _run_cli(*args):
  return subprocess.run([sys.executable, *args], cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_int8_export_of_a_normal_only_run_chooses_its_thresholds_on_validation(tmp_path):
  # No test split: the 8-bit model's thresholds come from the validation split it scores.
  import onnxruntime as ort
  from draem_jax.deployment import export
  config = _folder_config(tmp_path)
  config.eval.batch_size = 4
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, workdir)
  paths = export.export_run(workdir, tmp_path / "m.onnx", int8=True, calibration_images=4)
  meta = json.loads(paths["int8_metadata"].read_text())
  assert meta["quantization"]["test_split"] is None
  assert meta["quantization"]["calibration_images"] == 4
  assert "validation split" in meta["threshold_source"] and "8-bit" in meta["threshold_source"]
  split = validation.synthetic_split(config)
  session = ort.InferenceSession(str(paths["int8_onnx"]), providers=["CPUExecutionProvider"])
  maps, scores = session.run(None, {"image": split["images"]})
  assert meta["image_threshold"] == pytest.approx(
      helpers.sklearn_f1_threshold(split["labels"], scores), abs=1e-7)
  assert meta["pixel_threshold"] == pytest.approx(
      helpers.sklearn_f1_threshold(split["masks"] > 0.5, maps), abs=1e-7)
  assert meta["normalization"]["image_min"] == pytest.approx(float(scores.min()), abs=1e-7)
  assert meta["normalization"]["image_max"] == pytest.approx(float(scores.max()), abs=1e-7)


def test_normal_only_folder_trains_thresholds_and_predicts(tmp_path):
  config = _folder_config(tmp_path)
  config.eval.batch_size = 4
  workdir = tmp_path / "run"
  assert trainer.train_and_evaluate(config, workdir) is None  # No test split to evaluate.
  saved = json.loads((workdir / "eval" / "4" / "thresholds.json").read_text())
  assert saved["validation"]["files"] == [f"train/good/{i:03d}.png" for i in (2, 5, 6, 7)]
  assert saved["method"] == "f1" and saved["validation"]["num_synthetic_anomalous"] >= 1
  assert saved["image_min"] <= saved["image_threshold"] <= saved["image_max"]
  # Its figures are named and described as measured on synthetic anomalies (format 2).
  assert saved["format"] == 2 and "not on real defects" in saved["validation"]["note"]
  assert {"synthetic_image_auroc", "synthetic_image_ap", "synthetic_image_f1_max",
          "synthetic_pixel_ap", "synthetic_image"} <= set(saved["validation"])
  assert not {"image_auroc", "image"} & set(saved["validation"])

  # predict.py decides with no further step.
  new = tmp_path / "new"
  new.mkdir()
  for i in (0, 5):
    shutil.copy(tmp_path / "data" / "train" / "good" / f"{i:03d}.png", new / f"{i}.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), np.uint8)).save(
      new / "noise.png")
  (new / "truncated.jpg").write_bytes(b"\xff\xd8\xff")  # Unreadable: listed, not fatal.
  done = _run_cli("predict.py", f"--workdir={workdir}", f"--images={new}",
                  f"--out={tmp_path / 'pred'}", "--nooverlays")
  assert done.returncode == 1, done.stderr[-3000:]
  assert "3 images scored" in done.stdout and "1 could not be read" in done.stdout
  # The console says what the threshold's figures are: synthetic, not an estimate for real
  # defects (there is no labelled test split here to put first).
  assert "synthetic anomalies" in done.stdout and "do not estimate" in done.stdout
  assert "real defects at this threshold" not in done.stdout
  with open(tmp_path / "pred" / "errors.csv", newline="") as f:
    assert [r["file"] for r in csv.DictReader(f)] == [str(new / "truncated.jpg")]
  records = json.loads((tmp_path / "pred" / "scores.json").read_text())
  with open(tmp_path / "pred" / "scores.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [os.path.basename(r["file"]) for r in records] == ["0.png", "5.png", "noise.png"]
  for record, row in zip(records, rows):
    assert record["threshold"] == saved["image_threshold"]
    assert record["anomalous"] == (record["score"] >= saved["image_threshold"])
    assert float(row["score"]) == record["score"]  # Raw scores, not normalised, in the CSV.
    assert record["normalized_score"] == pytest.approx(float(metrics.normalize_scores(
        record["score"], saved["image_threshold"], saved["image_min"], saved["image_max"])))
    assert (record["normalized_score"] >= 0.5) == record["anomalous"]

  # The split (and, resume being exact, the thresholds) is the same after a resume.
  shutil.rmtree(workdir / "checkpoints" / "4")
  shutil.rmtree(workdir / "eval")
  trainer.train_and_evaluate(config, workdir)
  again = json.loads((workdir / "eval" / "4" / "thresholds.json").read_text())
  assert again["validation"]["files"] == saved["validation"]["files"]
  assert again["image_threshold"] == saved["image_threshold"]
  assert again["pixel_threshold"] == saved["pixel_threshold"]
  # The run records its split.
  recorded = json.loads((workdir / "validation_files.json").read_text())
  assert recorded["validation"] == saved["validation"]["files"]
  assert recorded["train"] == [f"train/good/{i:03d}.png" for i in (0, 1, 3, 4, 8, 9, 10, 11)]
  # A changed split would change the training set: resuming refuses it.
  config.data.validation_fraction = 0.5
  with pytest.raises(ConfigError, match="data.validation_fraction"):
    trainer.train_and_evaluate(config, workdir)
  # Even when the config change is allowed: images trained on (keys 0.488 and 0.400) would be
  # held out. Refused before anything is written.
  before = (workdir / "config.json").read_text()
  with pytest.raises(DataError, match=r"2 image\(s\) trained on would now be held out "
                                      r"\(train/good/000.png, train/good/009.png\)"):
    trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  assert (workdir / "config.json").read_text() == before
  assert json.loads((workdir / "validation_files.json").read_text()) == recorded
  # Images added to the folder leave every other image on its side: the resume is accepted.
  config.data.validation_fraction = 0.25
  for i in (12, 13, 14):
    Image.fromarray(np.full((32, 32, 3), 15 * i, np.uint8)).save(
        tmp_path / "data" / "train" / "good" / f"{i:03d}.png")
  grown = trainer._check_split(config, workdir, resuming=True)  # pylint: disable=protected-access
  assert grown["validation"] == recorded["validation"] + ["train/good/014.png"]
  assert grown["train"] == recorded["train"] + ["train/good/012.png", "train/good/013.png"]


def test_predict_console_puts_real_defects_before_synthetic_figures(tmp_path):
  # With a labelled test split the run's evaluation measured the validation threshold on real
  # defects: predict.py's console line gives those first, then the synthetic-split figures,
  # labelled as such (format 2 keys, and format 1 keys of older thresholds.json files).
  from draem_jax import inference
  eval_dir = tmp_path / "eval" / "7"
  eval_dir.mkdir(parents=True)
  (eval_dir / "metrics.json").write_text(json.dumps(
      {"validation_threshold": {"image_recall": 0.09, "image_fpr": 0.05}}))
  for validation_block in ({"synthetic_image_auroc": 0.903, "synthetic_image": {"recall": 0.73}},
                           {"image_auroc": 0.903, "image": {"recall": 0.73}}):
    metadata = {"image_threshold": 0.25, "checkpoint_step": 7, "validation": validation_block,
                "threshold_source": "validation split of train/good (f1, thresholds.json)"}
    text = inference.describe_thresholds(metadata, tmp_path)
    assert "real defects at this threshold: recall 9.0%, false-positive rate 5.0%" in text
    assert "synthetic anomalies: image AUROC 90.3%, recall 73.0%" in text
    assert text.index("real defects") < text.index("synthetic anomalies")
    assert "do not estimate the recall or AUROC on real defects" in text
  # Without a validation split: the threshold and where it comes from only.
  assert inference.describe_thresholds(
      {"image_threshold": 0.5, "checkpoint_step": 7,
       "threshold_source": "f1_max on the test split (evaluate.py)"}, tmp_path) == \
      "Image threshold 0.5: f1_max on the test split (evaluate.py)."
