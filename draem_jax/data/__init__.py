"""Data: MVTec AD (TFDS, ArrayRecord), custom folders, textures, and grain pipelines.

Public API (the trainer, evaluator and predictor use these):
  validate_data_config(config, process_count=1, require_test=True)
  num_train_examples(config) -> int
  make_train_iterator(config, *, process_index=0, process_count=1) -> grain.DatasetIterator
  make_eval_dataset(config, *, process_index=0, process_count=1) -> EvalDataset
  has_test_split(config) -> bool
  has_validation_split(config) -> bool (data.validation_fraction > 0)
  load_image(path, size=None) -> uint8 (H, W, 3)
"""

from draem_jax.data.images import load_image
from draem_jax.data.mvtec_info import CATEGORIES as MVTEC_CATEGORIES
from draem_jax.data.pipeline import EvalDataset
from draem_jax.data.pipeline import has_test_split
from draem_jax.data.pipeline import has_validation_split
from draem_jax.data.pipeline import make_eval_dataset
from draem_jax.data.pipeline import make_train_dataset
from draem_jax.data.pipeline import make_train_iterator
from draem_jax.data.pipeline import num_train_examples
from draem_jax.data.pipeline import validate_data_config

__all__ = [
    "EvalDataset", "MVTEC_CATEGORIES", "has_test_split", "has_validation_split", "load_image",
    "make_eval_dataset", "make_train_dataset", "make_train_iterator", "num_train_examples",
    "validate_data_config",
]
