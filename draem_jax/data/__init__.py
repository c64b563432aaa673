"""Data: MVTec AD (TFDS, ArrayRecord), custom folders, textures, and grain pipelines.

Public API (the trainer, evaluator and predictor use these):
  validate_data_config(config, process_count=1, require_test=True)
  num_train_examples(config) -> int
  make_train_iterator(config, *, process_index=0, process_count=1) -> grain.DatasetIterator
  make_eval_dataset(config, *, process_index=0, process_count=1) -> EvalDataset
  has_test_split(config) -> bool
  has_validation_split(config) -> bool (data.validation_fraction > 0)
  load_image(path, size=None) -> uint8 (H, W, 3)
  preprocess(config) -> image_io.Preprocess (the resize of every image of the run)
  image_hw(config), crop_hw(config), train_input_hw(config) -> (height, width) (crop: or None)
"""

from draem_jax.data.images import load_image
from draem_jax.data.mvtec_info import CATEGORIES as MVTEC_CATEGORIES
from draem_jax.data.pipeline import EvalDataset
from draem_jax.data.pipeline import crop_hw
from draem_jax.data.pipeline import has_test_split
from draem_jax.data.pipeline import has_validation_split
from draem_jax.data.pipeline import make_eval_dataset
from draem_jax.data.pipeline import make_train_dataset
from draem_jax.data.pipeline import make_train_iterator
from draem_jax.data.pipeline import image_hw
from draem_jax.data.pipeline import num_train_examples
from draem_jax.data.pipeline import preprocess
from draem_jax.data.pipeline import train_input_hw
from draem_jax.data.pipeline import validate_data_config

__all__ = [
    "EvalDataset", "MVTEC_CATEGORIES", "crop_hw", "has_test_split", "has_validation_split",
    "image_hw", "load_image", "make_eval_dataset", "make_train_dataset", "make_train_iterator",
    "num_train_examples", "preprocess", "train_input_hw", "validate_data_config",
]
