"""The user's whole job on the real bottle data: train -> evaluate -> predict, and errors."""

import json
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

import helpers
from draem_jax import config_lib
from draem_jax.training import trainer
from draem_jax.errors import ConfigError, DataError

BOTTLE = helpers.SHARED_DATA / "mvtec_ad" / "bottle"


def _run_cli(*args):
  return subprocess.run([sys.executable, *args], cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("bottle_run")
  config = helpers.tiny_config()
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.eval.write_overlays = False  # evaluate.py writes them below.
  result = trainer.train_and_evaluate(config, workdir)
  return workdir, result


def test_train_writes_artifacts_and_evaluates(trained_workdir):
  workdir, result = trained_workdir
  assert (workdir / "config.json").is_file()
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
  assert (workdir / "checkpoints" / "4").is_dir()
  assert result["num_test_images"] == 83 and result["step"] == 4
  for key in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "f1_max"):
    assert 0.0 <= result[key] <= 1.0, key
  assert set(result["per_defect_type"]) == {"broken_large", "broken_small", "contamination"}
  assert (workdir / "eval" / "4" / "metrics.json").is_file()
  assert (workdir / "eval" / "4" / "report.html").is_file()  # Every evaluation writes one.


def _tree(folder):
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_evaluate_and_predict_cli(trained_workdir, tmp_path):
  workdir, train_result = trained_workdir
  training_eval = workdir / "eval" / "4"
  before = _tree(training_eval)
  paper = json.loads((training_eval / "metrics.json").read_text())
  done = _run_cli("evaluate.py", f"--workdir={workdir}", "--protocol=standard",
                  "--full_resolution", "--overlays")
  assert done.returncode == 0, done.stderr[-3000:]
  # Another protocol goes to its own folder; training's evaluation is left byte for byte.
  out = training_eval / "standard_full_resolution"
  assert {k: v for k, v in _tree(training_eval).items()
          if k.parts[0] != "standard_full_resolution"} == before
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["protocol"] == "standard" and paper["protocol"] == "paper"
  assert 0.0 <= saved["aupro_full_resolution"] <= 1.0
  # Same predictions as in training's evaluation; the image metrics do not depend on masks.
  assert saved["image_auroc"] == pytest.approx(train_result["image_auroc"], abs=1e-6)
  assert "bottle" in (out / "comparison.md").read_text()
  overlays = sorted((out / "overlays").rglob("*.png"))
  assert len(overlays) == 83
  with Image.open(overlays[0]) as im:
    # Four tiles side by side, the 32x32 maps enlarged 8x to stay legible.
    assert im.size[0] >= 4 * 256 and im.size[1] >= 256
  scores_csv = (out / "scores.csv").read_text().splitlines()
  assert len(scores_csv) == 84
  # The report shows every overlay (and links nothing that is missing); its path is printed.
  assert f"Report: {out / 'report.html'}" in done.stdout
  page = (out / "report.html").read_text()
  links = set(re.findall(r'(?:src|href)="([^"]+)"', page))
  assert all((out / unquote(l)).is_file() for l in links)
  assert {(out / unquote(l)).resolve() for l in links if l.startswith("overlays/")} == \
      {p.resolve() for p in overlays}

  # predict.py on original-size test images, one of them made grayscale.
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  for name in ("000.png", "001.png"):
    (inputs / name).write_bytes((BOTTLE / "test" / "broken_large" / name).read_bytes())
  Image.open(BOTTLE / "test" / "good" / "000.png").convert("L").save(inputs / "gray.png")
  done = _run_cli("predict.py", f"--workdir={workdir}", f"--images={inputs}",
                  f"--out={tmp_path / 'pred'}")
  assert done.returncode == 0, done.stderr[-3000:]
  records = json.loads((tmp_path / "pred" / "scores.json").read_text())
  assert [os.path.basename(r["file"]) for r in records] == ["000.png", "001.png", "gray.png"]
  # predict.py decides with the run's own (paper) protocol's threshold.
  assert all(r["threshold"] == pytest.approx(paper["f1_threshold"]) for r in records)
  assert all(r["anomalous"] == (r["score"] >= r["threshold"]) for r in records)
  with Image.open(tmp_path / "pred" / "gray.png") as im:
    assert im.size[0] >= 3 * 900  # Three tiles at the image's own resolution.


def test_evaluate_an_all_run_from_its_top_folder(trained_workdir, tmp_path):
  # An `all` run keeps config.json only in its per-category sub-workdirs.
  from draem_jax import inference
  source, train_result = trained_workdir
  workdir = tmp_path / "all"
  shutil.copytree(source, workdir / "bottle", ignore=shutil.ignore_patterns("eval"))
  results = inference.evaluate_workdir(workdir)
  assert set(results) == {"bottle"}
  assert results["bottle"]["image_auroc"] == pytest.approx(train_result["image_auroc"], abs=1e-6)
  assert (workdir / "bottle" / "eval" / "4" / "metrics.json").is_file()
  assert "bottle" in (workdir / "summary.md").read_text()
  assert "bottle/eval/4/report.html" in (workdir / "report.html").read_text()
  # Another protocol: its summary and index in a folder of their own.
  inference.evaluate_workdir(workdir, protocol="standard")
  assert (workdir / "bottle" / "eval" / "4" / "standard" / "metrics.json").is_file()
  index = (workdir / "eval_standard" / "report.html").read_text()
  assert "bottle/eval/4/standard/report.html" in index
  with pytest.raises(ConfigError, match="config.json does not exist"):
    inference.evaluate_workdir(tmp_path / "all" / "bottle" / "checkpoints")


def test_config_errors_fail_before_compute(tmp_path):
  config = helpers.tiny_config()
  config.data.category = "bottel"
  with pytest.raises(ConfigError, match="data.category"):
    trainer.train_and_evaluate(config, tmp_path / "a")
  config = helpers.tiny_config()
  config.train.num_steps = -5
  with pytest.raises(ConfigError, match="train.num_steps"):
    trainer.train_and_evaluate(config, tmp_path / "b")
  config = helpers.tiny_config(root=tmp_path / "missing")
  config.data.tfds_data_dir = str(tmp_path / "tfds")  # Nothing prepared there either.
  with pytest.raises(DataError, match=str(tmp_path / "missing")):
    trainer.train_and_evaluate(config, tmp_path / "c")
  assert not (tmp_path / "a" / "checkpoints").exists()
  # The command line reports it as one line and exit status 2.
  done = _run_cli("train.py", "--config=configs/mvtec.py", "--config.data.category=bottel",
                  f"--workdir={tmp_path / 'd'}")
  assert done.returncode == 2 and "data.category" in done.stderr


def test_predict_reports_missing_images(tmp_path, trained_workdir):
  from draem_jax import inference
  workdir, _ = trained_workdir
  with pytest.raises(DataError, match="matches no image"):
    inference.predict_images(workdir, str(tmp_path / "*.png"), tmp_path / "out")


def test_resume_refuses_a_changed_run_unless_allowed(trained_workdir, tmp_path):
  source, _ = trained_workdir
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  saved = (workdir / "config.json").read_text()
  config = config_lib.load_config(workdir)
  config.train.num_steps = 6
  config.optim.learning_rate = 3e-4
  with pytest.raises(ConfigError) as refused:
    trainer.train_and_evaluate(config, workdir)
  message = str(refused.value)
  assert "optim.learning_rate: 0.0001 -> 0.0003" in message
  assert "train.num_steps: 4 -> 6" in message and "--allow_config_change" in message
  assert (workdir / "config.json").read_text() == saved  # The run's record is untouched.
  assert not (workdir / "checkpoints" / "6").exists()
  # Explicitly allowed: the run continues from step 4 and keeps its first config.
  config.optim.learning_rate = 1e-4
  config.eval.write_overlays = False
  trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  assert (workdir / "checkpoints" / "6").is_dir()
  history = config_lib.load_history(workdir)
  assert len(history) == 1 and history[0]["resumed_from_step"] == 4
  assert history[0]["changed"]["train.num_steps"] == [4, 6]
  assert json.loads(saved) == history[0]["config"]
  assert config_lib.load_config(workdir).train.num_steps == 6


def test_item3_allowed_config_change_of_the_networks_shapes_is_refused_untouched(
    trained_workdir, tmp_path):
  """--allow_config_change with another model.recon_width: refused before anything is written
  (config.json keeps describing the model the checkpoints hold)."""
  source, _ = trained_workdir
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  before = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  config = config_lib.load_config(workdir)
  config.model.recon_width = 8
  config.train.num_steps = 6
  with pytest.raises(ConfigError) as refused:
    trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  message = str(refused.value)
  assert "holds networks of other shapes" in message and "model.recon_width: 4 -> 8" in message
  assert "new --workdir" in message
  after = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before  # config.json, history, checkpoints, results: all as they were.
