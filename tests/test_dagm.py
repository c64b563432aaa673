"""DAGM 2007: the reader (layout, Labels.txt, defect-free training), the Table 4 metrics
against hand-computed cases, and a tiny run on a DAGM-style folder made from bottle images."""

import importlib.util
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

import helpers
from draem_jax.data import dagm
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError, DataError
from draem_jax.evaluation import metrics
from draem_jax.training import trainer

BOTTLE = helpers.SHARED_DATA / "mvtec_ad" / "bottle"


def _save_gray(source, target, size=64):
  Image.open(source).convert("L").resize((size, size), Image.BILINEAR).save(target)


def _ellipse_label(target, size=64):
  label = Image.new("L", (size, size), 0)
  ImageDraw.Draw(label).ellipse((20, 16, 44, 40), fill=255)
  label.save(target)


def make_dagm(root, good=(10, 4), defective=(2, 4), labels_file=True):
  """root/Class1/{Train,Test}: grayscale bottle images as DAGM's numbered PNGs, defective ones
  (broken_large) with an ellipse Label/<name>_label.PNG, and Labels.txt."""
  goods = sorted((BOTTLE / "train" / "good").glob("*.png"))
  broken = sorted((BOTTLE / "test" / "broken_large").glob("*.png"))
  for split, n_good, n_bad in (("Train", good[0], defective[0]),
                               ("Test", good[1], defective[1])):
    folder = root / "Class1" / split
    (folder / "Label").mkdir(parents=True)
    lines = [str(n_good + n_bad)]
    offset = 0 if split == "Train" else 100
    for i in range(n_good + n_bad):
      name = f"{i + 1:04d}.PNG"
      bad = i % 2 == 1 and i // 2 < n_bad  # Interleaved with the good ones (n_bad <= n_good).
      source = broken[(offset + i) % len(broken)] if bad else goods[(offset + i) % len(goods)]
      _save_gray(source, folder / name)
      label = "0"
      if bad:
        label = f"{i + 1:04d}_label.PNG"
        _ellipse_label(folder / "Label" / label)
      lines.append(f"{i + 1}\t{int(bad)}\t{name}\t0\t{label}")
    if labels_file:
      (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture(scope="module")
def dagm_root(tmp_path_factory):
  return make_dagm(tmp_path_factory.mktemp("dagm"))


def test_reader_trains_on_defect_free_images_only(dagm_root):
  train = dagm.scan(dagm_root, "Class1", "train")
  test = dagm.scan(dagm_root, "Class1", "test")
  assert len(train) == 10 and {s.label for s in train} == {0}
  assert len(test) == 8 and sum(s.label for s in test) == 4
  assert {s.defect_type for s in test} == {"good", "defect"}
  assert test[0].file_name == "Class1/Test/0001.PNG" and all(s.mask is None for s in test)
  listed = dagm.read_labels(dagm_root / "Class1" / "Test" / "Label" / "Labels.txt")
  assert {s.file_name.rsplit("/", 1)[1]: s.label for s in test} == listed


def test_labels_from_label_files_without_labels_txt(tmp_path):
  root = make_dagm(tmp_path, good=(3, 2), defective=(1, 2), labels_file=False)
  assert [s.label for s in dagm.scan(root, "Class1", "train")] == [0, 0, 0]
  test = dagm.scan(root, "Class1", "test")
  assert sum(s.label for s in test) == 2 and len(test) == 4


def test_reader_errors(tmp_path):
  root = make_dagm(tmp_path, good=(3, 2), defective=(1, 2))
  with pytest.raises(DataError, match="Class7"):
    dagm.scan(root, "Class7", "train")
  labels = root / "Class1" / "Test" / "Label" / "Labels.txt"
  text = labels.read_text()
  labels.write_text(text + "9\t0\t0009.PNG\t0\t0\n")
  with pytest.raises(DataError, match="0009.PNG"):
    dagm.scan(root, "Class1", "test")
  labels.write_text(text.replace("\t1\t", "\tyes\t", 1))
  with pytest.raises(DataError, match="defect flag"):
    dagm.scan(root, "Class1", "test")
  (root / "Class1" / "Test" / "0005.PNG").write_bytes(
      (root / "Class1" / "Test" / "0001.PNG").read_bytes())
  labels.write_text(text)
  with pytest.raises(DataError, match="0005.PNG is not listed"):
    dagm.scan(root, "Class1", "test")


def _dagm_config(root):
  spec = importlib.util.spec_from_file_location("dagm_cfg", helpers.REPO / "configs" / "dagm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("Class1")
  tiny = helpers.tiny_config()
  for group in ("model", "train", "checkpoint"):
    config[group] = tiny[group]
  config.data.root = str(root)
  config.data.texture_root = str(helpers.SHARED_DATA / "dtd" / "images" / "banded")
  config.data.image_size = 32
  config.data.num_workers = 0
  config.eval.batch_size = 8
  config.eval.write_overlays = False
  config.train.num_steps = 2
  config.checkpoint.every_steps = 2
  return config


def test_config_checks(dagm_root):
  config = _dagm_config(dagm_root)
  pipeline.validate_data_config(config)
  assert pipeline.num_train_examples(config) == 6  # 10 defect-free, 4 held out.
  config.data.validation_fraction = 0.0
  with pytest.raises(ConfigError, match="validation_fraction"):
    pipeline.validate_data_config(config)


def test_classification_metrics_hand_computed():
  labels = np.array([0, 0, 0, 1, 1])
  scores = np.array([0.1, 0.5, 0.2, 0.6, 0.3])
  out = metrics.classification_metrics(labels, scores, 0.5)  # Called defective: 0.5, 0.6.
  assert out == {"threshold": 0.5, "tpr": 0.5, "tnr": 2 / 3, "accuracy": 3 / 5}
  out = metrics.classification_metrics(labels, scores, 0.05)  # Everything defective.
  assert (out["tpr"], out["tnr"], out["accuracy"]) == (1.0, 0.0, 0.4)
  out = metrics.classification_metrics(np.zeros(3), np.array([0.1, 0.9, 0.2]), 0.5)
  assert math.isnan(out["tpr"]) and out["tnr"] == 2 / 3 and out["accuracy"] == 2 / 3
  table = metrics.dagm_table("Class1", {"dagm": {"image_auroc": 0.9, "tpr": 0.5, "tnr": 1.0,
                                                 "accuracy": 0.75}})
  assert "| TPR | 50.0 | 96.5 | -46.5 |" in table
  assert "| image AUROC | 90.0 | 99.0 | -9.0 |" in table


def test_train_and_evaluate_reports_table4_metrics(dagm_root, tmp_path):
  config = _dagm_config(dagm_root)
  trainer.train_and_evaluate(config, tmp_path)
  result = json.loads((tmp_path / "eval" / "2" / "metrics.json").read_text())
  assert result["num_test_images"] == 8 and not result["has_masks"]
  table4 = result["dagm"]
  assert table4["image_auroc"] == result["image_auroc"]
  assert "eval.threshold_method=fpr" in table4["threshold_source"]
  # scores.csv's decisions (full-precision scores at the same threshold; its printed scores
  # are rounded, and after two steps the scores differ by less than that).
  rows = [r.split(",") for r in
          (tmp_path / "eval" / "2" / "scores.csv").read_text().splitlines()[1:]]
  labels = np.array([int(r[2]) for r in rows])
  called = np.array([int(r[-1]) for r in rows])
  assert table4["tpr"] == pytest.approx(np.mean(called[labels == 1]))
  assert table4["tnr"] == pytest.approx(np.mean(1 - called[labels == 0]))
  assert table4["accuracy"] == pytest.approx(np.mean(called == labels))
  assert "TNR" in (tmp_path / "eval" / "2" / "comparison.md").read_text()
