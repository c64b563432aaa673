"""Shared helpers for the end-to-end tests: tiny configs and generated data sets."""

import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from configs import mvtec  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(root: str | Path = SHARED_DATA / "mvtec_ad",
                texture_root: str | Path = SHARED_DATA / "dtd" / "images",
                source: str = "mvtec") -> ml_collections.ConfigDict:
  """The paper's config at toy size: 32x32 (or set data.image_size), widths 4, batch 4."""
  config = mvtec.get_config("bottle")
  config.data.source = source
  config.data.root = str(root)
  config.data.texture_root = str(texture_root)
  config.data.tfds_data_dir = ""
  config.data.image_size = 32
  config.data.num_workers = 0
  config.model.recon_width = 4
  config.model.disc_width = 4
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.log_every_steps = 2
  config.checkpoint.every_steps = 2
  config.eval.batch_size = 16
  return config


# Steps of conftest's `trained_workdir`: enough for scores that differ between images (after 2
# they agree to 1e-7).
TRAINED_STEPS = 30


def copy_with_validation_stats(workdir: Path, dest: Path,
                               step: int = TRAINED_STEPS) -> Path:
  """A copy of the run whose checkpoint has a (hand-written) validation thresholds.json, so
  that predict.py and the runner both report `normalized_score`."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, dest)
  (dest / "eval" / str(step) / "thresholds.json").write_text(json.dumps({
      "method": "f1", "image_threshold": 0.5, "pixel_threshold": 0.5, "image_min": 0.25,
      "image_max": 0.75, "pixel_min": 0.0, "pixel_max": 1.0}))
  return dest


def config_flags(config: ml_collections.ConfigDict) -> list[str]:
  """The command-line overrides that turn configs/mvtec.py into `config`."""
  base = mvtec.get_config("bottle")
  flags = []
  for group, fields in config.items():
    for name, value in fields.items():
      if base[group].get(name) != value:
        flags.append(f"--config.{group}.{name}={value}")
  return flags


def make_folder_dataset(root: Path, num_train: int = 8, size: int = 40, seed: int = 0,
                        gray: bool = False) -> Path:
  """A small folder data set (train/good only) of smooth random images."""
  rng = np.random.default_rng(seed)
  good = root / "train" / "good"
  good.mkdir(parents=True)
  for i in range(num_train):
    base = rng.uniform(60, 200, size=(4, 4, 1 if gray else 3))
    image = np.kron(base, np.ones((size // 4, size // 4, 1))).astype(np.uint8)
    Image.fromarray(image[..., 0] if gray else image).save(good / f"{i:03d}.png")
  return root


def make_textures(root: Path, count: int = 6, size: int = 48, seed: int = 1) -> Path:
  """A folder of random texture images."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        root / f"t{i}.jpg")
  return root


def restore_tiny_state(workdir: Path, step: int, total_steps: int):
  """Checkpoint `step` of a `tiny_config` run (32x32, widths 4) as numpy arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  from draem_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from draem_jax import models
  from draem_jax.training import parallel
  from draem_jax.training import train_step as ts  # pylint: disable=g-import-not-at-top
  model = models.DRAEM(4, 4)
  tx = ts.make_optimizer(tiny_config().optim, total_steps)
  mesh = parallel.make_mesh(jax.devices()[:1])
  abstract = ts.abstract_train_state(model, tx, (32, 32), mesh)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints")
  try:
    return jax.device_get(checkpointer.restore(abstract, step=step))
  finally:
    checkpointer.close()


def sklearn_f1_threshold(labels, scores) -> float:
  """The F1-max threshold from sklearn's precision-recall curve (the highest among ties), an
  independent reference for `metrics.f1_max`."""
  from sklearn.metrics import precision_recall_curve  # pylint: disable=g-import-not-at-top
  precision, recall, thresholds = precision_recall_curve(np.ravel(labels), np.ravel(scores))
  f1 = (2 * precision * recall / np.maximum(precision + recall, 1e-12))[:-1]
  return float(thresholds[np.flatnonzero(f1 == f1.max())[-1]])


def run_python(code: str, timeout: float = 120) -> str:
  """Runs `code` in a fresh interpreter at the repository root (nothing imported yet); its stdout."""
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout
