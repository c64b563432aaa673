"""DRAEM on your own images, laid out like MVTec AD (only train/good is required).

Usage:
  python train.py --config configs/folder.py:/data/my_parts
  DRAEM_FOLDER_ROOT=/data/my_parts python train.py --config configs/folder.py

Layout of the folder (`data.root`):
  train/good/*.png                        defect-free training images (PNG/JPEG/BMP/TIFF)
  test/good/, test/<defect>/              test images (optional; needed for evaluation)
  ground_truth/<defect>/<name>_mask.png   masks (optional; without ground_truth/ evaluation
                                          is image-level only)
Instead of train/good, `--config.data.train_list=files.txt` can list the training images.
Every other setting is the paper's (configs/mvtec.py).
"""

import importlib.util
import os
from pathlib import Path

import ml_collections


def _mvtec_config_module():
  # ml_collections loads config files by path, outside any package, so configs/mvtec.py is
  # loaded the same way rather than imported.
  path = Path(__file__).resolve().with_name("mvtec.py")
  spec = importlib.util.spec_from_file_location("draem_configs_mvtec", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's configuration on a folder data set; `arg` is the folder (data.root)."""
  config = _mvtec_config_module().get_config()
  config.data.source = "folder"
  config.data.root = arg or os.environ.get("DRAEM_FOLDER_ROOT", "")
  config.data.category = Path(config.data.root).name or "folder"  # Names the run only.
  return config
