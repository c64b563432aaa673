"""bench/gpu_suite.py dry-runs on the CPU (--tiny), and bench/gpu_bundle.py's data copy."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_bundle  # pylint: disable=g-import-not-at-top,wrong-import-position
import gpu_suite  # pylint: disable=g-import-not-at-top,wrong-import-position

# Packages a stock JAX GPU image lacks and the suite must not need (gpu_bundle.WHEELS aside).
_BLOCKED = ("tensorflow_datasets", "tensorflow", "tensorboardX", "jax2onnx")


@pytest.fixture(scope="module")
def mini_bottle(shared_data, tmp_path_factory):
  """16 training and 12 test images of bottle at 64x64, made as the bundle makes its copy."""
  root = tmp_path_factory.mktemp("bundle") / "bottle"
  written = gpu_bundle.resize_category(shared_data / "mvtec_ad" / "bottle", root, 64, limit=3,
                                       train_limit=16)
  assert written == 16 + 12
  return root


def _numbers(tree, path=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _numbers(v, f"{path}.{k}" if path else k)
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _numbers(v, f"{path}[{i}]")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree


def test_bundle_copy_keeps_layout_and_mask_values(mini_bottle):
  for folder in ("train/good", "test/good", "test/broken_large", "ground_truth/broken_large"):
    assert len(list((mini_bottle / folder).glob("*.png"))) == (16 if "train" in folder else 3)
  image = np.asarray(Image.open(mini_bottle / "test/broken_large/000.png"))
  mask = np.asarray(Image.open(mini_bottle / "ground_truth/broken_large/000_mask.png"))
  assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
  assert set(np.unique(mask)) == {0, 255}  # Nearest neighbour: no blended edge values.


def test_tiny_suite_runs_every_phase(mini_bottle, shared_data, tmp_path):
  blocked = tmp_path / "blocked"
  for name in _BLOCKED:
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(blocked))
  budget = 900  # A cap only: ~100 s of CPU time idle, several times that on a busy machine.
  proc = subprocess.run(
      [sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--tiny", "--budget_s",
       str(budget), "--out", str(out), "--data_root", str(mini_bottle), "--texture_root",
       str(shared_data / "dtd" / "images")], env=env, capture_output=True, text=True,
      timeout=budget + 120, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  files = sorted(p.name for p in out.iterdir())
  assert len(files) <= 8 and {"results.json", "suite.log", "report.html"} <= set(files)
  assert len([f for f in files if f.startswith("overlay_")]) == 3
  results = json.loads((out / "results.json").read_text())
  assert all(v["status"] == "done" for v in results["phase_status"].values()), (
      results["phase_status"])
  assert results["suite"]["elapsed_s"] <= budget
  env_info = results["environment"]
  assert env_info["device"] and env_info["jax"] and env_info["jaxlib"] and env_info["commit"]
  for key in ("bfloat16_batch8", "float32_batch8", "bfloat16_largest", "float32_largest"):
    row = results["train_step"][key]
    for field in ("step_s", "images_per_s", "compile_s", "mfu_vs_matmul", "peak_memory_bytes",
                  "achieved_tflops"):
      assert row[field] > 0, (key, field)
  assert results["layer_impl"]["auto_resolves_to"] == "custom"
  assert results["layer_impl"]["plain_over_custom_step_time"] > 0
  assert results["simulator"]["share_of_bfloat16_batch8_step"] > 0
  assert results["simulator"]["batch64"]["ms_per_image"] > 0
  bottle = results["bottle"]
  assert bottle["epochs"] == 2 and bottle["steps"] == 4 and bottle["step"] == 4
  for name in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "train_images_per_s"):
    assert 0 <= bottle[name] and math.isfinite(bottle[name]), name
  assert results["projection"]["total_s"] > 0 and results["projection"]["steps"] == 700 * 2
  # Every number is finite; what has no value on a CPU says why.
  bad = [(path, v) for path, v in _numbers(results) if not math.isfinite(v)]
  assert not bad, bad
  nulls = [k for k, v in results["train_step"]["bfloat16_batch8"].items() if v is None]
  assert set(nulls) <= set(results["not_applicable"]) == {"mfu_vs_peak"}
  report = (out / "report.html").read_text()
  assert "overlay_broken_large_000.png" in report and "700 epochs" in report


def test_short_budget_skips_the_bottle_run_and_says_why(mini_bottle, shared_data, tmp_path):
  args = gpu_suite.parse_args([
      "--tiny", "--budget_s", "30", "--out", str(tmp_path), "--phases", "3,4,5",
      "--data_root", str(mini_bottle), "--texture_root", str(shared_data / "dtd" / "images")])
  suite = gpu_suite.Suite(args)
  # As if phase 1 had measured a step that compiles in 20 s: compiling it twice (train step,
  # evaluation) and evaluating cannot fit in the 30 s budget.
  key = ("bfloat16", 8, suite.layer_impl)
  suite.step_s[key], suite.compile_s[key] = 0.5, 20.0
  assert suite.run() == 0
  results = json.loads((tmp_path / "results.json").read_text())
  status = results["phase_status"]
  assert status["bottle"]["status"] == "skipped"
  assert "budget too short" in status["bottle"]["reason"]
  assert "epochs" not in results["bottle"] and results["bottle"]["num_train_images"] == 16
  assert status["train_step"]["status"] == "not requested"
  assert status["projection"]["status"] == "done"
  assert results["suite"]["elapsed_s"] < 30
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results.json",
                                                        "suite.log"]


def test_bad_overrides_and_data_stop_before_any_compute(mini_bottle, shared_data, tmp_path):
  base = ["--tiny", "--out", str(tmp_path), "--texture_root",
          str(shared_data / "dtd" / "images")]
  with pytest.raises(SystemExit, match="no field 'data.no_such_field'"):
    gpu_suite.Suite(gpu_suite.parse_args(base + ["--data_root", str(mini_bottle), "--set",
                                                 "data.no_such_field=1"]))
  assert gpu_suite.main(base + ["--data_root", str(tmp_path / "missing")]) == 2
  assert gpu_suite.main(base + ["--data_root", str(mini_bottle), "--set",
                                "model.dtype=float16"]) == 2
  assert not list(tmp_path.iterdir())
  # The paper's configuration with crops, on the suite's path.
  suite = gpu_suite.Suite(gpu_suite.parse_args(base + [
      "--data_root", str(mini_bottle), "--phases", "3", "--set", "data.crop_size=32",
      "--set", "data.image_size=(64, 96)"]))
  config = suite.bottle_config(1)
  assert config.data.crop_size == 32 and tuple(config.data.image_size) == (64, 96)


def test_bottle_run_is_stopped_at_the_budget(mini_bottle, shared_data, tmp_path):
  args = gpu_suite.parse_args([
      "--tiny", "--budget_s", "30", "--out", str(tmp_path), "--phases", "3",
      "--max_epochs", "1000", "--data_root", str(mini_bottle), "--texture_root",
      str(shared_data / "dtd" / "images")])
  suite = gpu_suite.Suite(args)
  # A step time far too optimistic: the run is planned for 1,000 epochs and must be stopped
  # by the watchdog (SIGTERM: the trainer saves a checkpoint and stops between steps).
  key = ("bfloat16", 8, suite.layer_impl)
  suite.step_s[key], suite.compile_s[key] = 1e-4, 1e-3
  assert suite.run() == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["bottle"]["epochs"] == 1000
  assert results["phase_status"]["bottle"]["status"] == "stopped"
  assert "stopped by the budget at step" in results["phase_status"]["bottle"]["reason"]
  # The watchdog fires 4 s before the end, during the compilation here (which nothing can
  # interrupt), and the trainer stops after its first step; 2,000 steps would take half an
  # hour on a CPU.
  assert results["suite"]["elapsed_s"] < 30 + 210


def test_gpu_only_arithmetic(mini_bottle, shared_data, tmp_path, monkeypatch):
  """Peaks by device name, MFU against TF32, and the largest batch from a memory limit."""
  assert gpu_suite.peaks_for("NVIDIA H100 80GB HBM3") == pytest.approx(
      (989.4e12, 494.7e12, 66.9e12))
  assert gpu_suite.peaks_for("NVIDIA H100 PCIe")[0] == pytest.approx(756e12)
  assert gpu_suite.peaks_for("NVIDIA H200")[1] == pytest.approx(494.7e12)
  assert gpu_suite.peaks_for("cpu") is None
  suite = gpu_suite.Suite(gpu_suite.parse_args([
      "--tiny", "--out", str(tmp_path), "--phases", "1", "--max_batch", "256"]))
  suite.peaks = gpu_suite.peaks_for("NVIDIA H200")
  suite.results["flops"] = {"train_per_image": 3 * 395.9e9}
  suite.results["matmul"] = {"bfloat16_tflops": 790.0, "float32_default_tflops": 400.0,
                             "float32_uses_tf32": True}
  bf16 = suite.mfu("bfloat16", 400.0)  # 400 images/s: 475 TFLOP/s.
  assert bf16["peak_used"] == "bfloat16"
  assert bf16["mfu_vs_peak"] == pytest.approx(400 * 3 * 395.9e9 / 989.4e12)
  assert bf16["mfu_vs_matmul"] == pytest.approx(400 * 3 * 395.9e9 / 790e12)
  fp32 = suite.mfu("float32", 100.0)
  assert fp32["peak_used"] == "tf32"
  assert fp32["mfu_vs_peak"] == pytest.approx(100 * 3 * 395.9e9 / 494.7e12)
  # 10 GiB usable, the batch-8 step needing 1 GiB beyond the train state: ~70 images fit.
  state = 16 * suite._param_count()  # pylint: disable=protected-access
  suite.results["train_step"]["bfloat16_batch8"] = {"xla_memory_bytes": state + 2**30}
  monkeypatch.setattr(suite, "memory_limit", lambda: 10 * 2**30 / 0.9 + state / 0.9)
  batch, rule = suite.largest_batch("bfloat16")
  assert batch == 80 and "MiB per image" in rule
  monkeypatch.setattr(suite, "memory_limit", lambda: None)
  assert suite.largest_batch("bfloat16")[0] == 256
