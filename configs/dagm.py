"""DRAEM on DAGM 2007 with the paper's protocol (its Table 4).

Usage:
  DRAEM_DAGM_ROOT=/data/DAGM python train.py --config configs/dagm.py:Class1 --workdir w/c1

Layout of `data.root` (the public competition data): ClassN/Train/*.PNG, ClassN/Test/*.PNG,
ClassN/{Train,Test}/Label/Labels.txt and Label/<name>_label.PNG (draem_jax/data/dagm.py).
Training uses only the defect-free Train images; testing all of Test, image classification
only (the labels are coarse ellipses, so localisation is not scored). The paper reports image
AUROC, TPR, TNR and classification accuracy; the last three need a decision threshold, which
the paper does not say how it chose. Here it is chosen without the test set: 10% of the
defect-free Train images are held out, and the threshold is the score that at most 1% of them
reach (eval.threshold_method="fpr", eval.target_fpr=0.01). Every other setting is the paper's
(configs/mvtec.py), as in the paper ("the same parameters as on MVTec AD").
"""

import os

import ml_collections

# Config files are loaded by path; train.py sits at the repository root, so `configs` imports.
from configs import mvtec

DAGM_CLASSES = tuple(f"Class{i}" for i in range(1, 11))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's configuration on DAGM 2007; `arg` is the class folder (default Class1)."""
  config = mvtec.get_config()
  config.data.source = "dagm"
  config.data.root = os.environ.get("DRAEM_DAGM_ROOT", "~/data/DAGM")  # Holds ClassN folders.
  config.data.category = arg or "Class1"  # One of DAGM_CLASSES (Class1..Class10).
  config.data.validation_fraction = 0.1  # Held-out defect-free Train images: the threshold.
  config.eval.threshold_method = "fpr"  # Threshold: at most target_fpr of them flagged.
  config.eval.target_fpr = 0.01
  return config
