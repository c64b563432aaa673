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

import os
from pathlib import Path

import ml_collections

# Config files are loaded by path; train.py sits at the repository root, so `configs` imports.
from configs import mvtec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's configuration on a folder data set; `arg` is the folder (data.root)."""
  config = mvtec.get_config()
  config.data.source = "folder"
  config.data.root = arg or os.environ.get("DRAEM_FOLDER_ROOT", "")
  config.data.category = Path(config.data.root).name or "folder"  # Names the run only.
  # Own images rarely come with labelled defects: hold out 10% of train/good (at least 4) to
  # choose the decision thresholds on synthetic anomalies.
  config.data.validation_fraction = 0.1
  return config
