"""grain input pipelines: training batches (image + texture) and evaluation batches.

Training (`make_train_iterator`), per process:

  source indices -> shuffle (seeded by train.seed, reshuffled every epoch) -> repeat forever ->
  pair each image with a texture index drawn uniformly (per-element seeded generator) -> global
  batches of train.batch_size index pairs (drop remainder) -> this process's rows
  [p*b, (p+1)*b) of each, b = batch_size // process_count: decode + RGB + bilinear resize to
  data.image_size (or a gather from the decoded cache) -> prefetch

Everything is a grain `MapDataset`, i.e. a pure function of the element index, so the stream is
the same with 0, 1 or more worker processes, the global batch is the same for any number of
JAX processes, and an iterator's state (the next global batch) restores it exactly. The
anomaly simulator runs later, on the device, from explicit JAX
keys (DRAEM_SPEC 4); the host only supplies clean images and raw textures as uint8.

The decoded cache (data.cache_decoded, default True): decoding a 900x900 MVTec PNG and
resizing it costs ~30 ms of one core, a training set holds at most ~400 images, so decoding
them (and the textures) once into memory turns every later batch into an array gather. With the
cache the pipeline runs in the main process (a gather needs no workers; worker processes would
each hold a copy of the cache); data.num_workers then only matters when the cache is off.
bench/input_pipeline.py measures both.

Evaluation (`make_eval_dataset`): every test sample exactly once, sorted by (defect type, file
name), in global batches of eval.batch_size rounded up to a multiple of the device count, the
last batch padded and flagged by `valid` (`draem_jax.data.padding`); masks resized like the reference protocol
(bilinear, no antialiasing, float 0..1; the evaluator thresholds them, DRAEM_SPEC 5).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import logging

from draem_jax.data import dagm as dagm_lib
from draem_jax.data import folder as folder_lib
from draem_jax.data import images as images_lib
from draem_jax.data import mvtec_info
from draem_jax.data import padding
from draem_jax.data import textures as textures_lib
from draem_jax.errors import ConfigError, DataError

SOURCES = ("mvtec", "folder", "dagm")
# The discriminative U-Net max-pools 5 times (DRAEM_SPEC 1): sides must divide by 2^5.
SIZE_MULTIPLE = 32



def _mvtec():
  """The MVTec AD TFDS builder module, imported on first use: folder data sets run without
  tensorflow-datasets installed."""
  from draem_jax.data import mvtec  # pylint: disable=g-import-not-at-top
  return mvtec

# ------------------------------------------------------------------------------------------
# Config checks and split readers.


def _check_config(config: ml_collections.ConfigDict, process_count: int = 1,
                  batch_fields: tuple[str, ...] = ("train",)) -> None:
  """Config-only checks (no file system access); raises ConfigError naming the field.

  `batch_fields` names the groups whose batch_size must split over `process_count` (train;
  evaluation batches are padded to fit, `padding.padded_batch_size`).
  """
  data = config.data
  if data.source not in SOURCES:
    raise ConfigError(f"data.source={data.source!r} must be one of {SOURCES}: 'mvtec' for "
                      "MVTec AD, 'folder' for your own images (see configs/folder.py), 'dagm' "
                      "for DAGM 2007 (configs/dagm.py).")
  image_hw = _model_hw(data.image_size, "data.image_size")
  resize = data.get("resize", "stretch")
  if resize not in images_lib.RESIZE_MODES:
    raise ConfigError(f"data.resize={resize!r} must be one of {images_lib.RESIZE_MODES}: "
                      "stretch (to data.image_size, the reference), fit_long_side (keep the "
                      "aspect ratio, pad) or fit_short_side (keep the aspect ratio, crop the "
                      "centre).")
  antialias = data.get("resize_antialias", False)
  if not isinstance(antialias, (bool, np.bool_)):
    raise ConfigError(f"data.resize_antialias={antialias!r} must be True or False.")
  crop = data.get("crop_size", 0)
  if crop != 0:
    crop_hw = _model_hw(crop, "data.crop_size")
    if crop_hw[0] > image_hw[0] or crop_hw[1] > image_hw[1]:
      raise ConfigError(f"data.crop_size={crop!r} is larger than data.image_size="
                        f"{data.image_size!r}: crops are cut from the resized image (0 = off).")
  if process_count < 1:
    raise ConfigError(f"process_count={process_count} must be >= 1.")
  for group in batch_fields:
    field, value = f"{group}.batch_size", config[group].batch_size
    if not isinstance(value, (int, np.integer)) or value <= 0 or value % process_count:
      raise ConfigError(f"{field}={value!r} must be a positive multiple of the number of "
                        f"processes ({process_count}).")
  if data.num_workers < 0:
    raise ConfigError(f"data.num_workers={data.num_workers} must be >= 0 (0 = main process).")
  if data.prefetch_buffer_size < 1:
    raise ConfigError(f"data.prefetch_buffer_size={data.prefetch_buffer_size} must be >= 1.")
  if data.source == "mvtec" and data.category not in mvtec_info.CATEGORIES + ("all",):
    raise ConfigError(f"data.category={data.category!r} is not an MVTec AD category; expected "
                      f"one of {', '.join(mvtec_info.CATEGORIES)} or 'all'.")
  if data.source == "folder" and not str(data.root):
    raise ConfigError("data.root is empty: set it to the folder that holds train/good "
                      "(--config configs/folder.py:/path/to/data or DRAEM_FOLDER_ROOT).")
  if data.source == "dagm" and (not str(data.root) or not str(data.category)):
    raise ConfigError(f"data.root={str(data.root)!r} / data.category={str(data.category)!r}: "
                      "DAGM 2007 needs the folder that holds the class folders and one class, "
                      "e.g. --config configs/dagm.py:Class1 with DRAEM_DAGM_ROOT set.")
  fraction = data.get("validation_fraction", 0.0)
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating))
      or not 0.0 <= fraction < 1.0):
    raise ConfigError(f"data.validation_fraction={fraction!r} must be in [0, 1): the share of "
                      "train/good held out to choose the thresholds (0 = train on all of it).")
  if data.source == "dagm" and fraction == 0:
    raise ConfigError("data.validation_fraction=0: DAGM's TPR, TNR and accuracy need a "
                      "threshold chosen without the test set, on held-out defect-free Train "
                      "images; set it > 0 (configs/dagm.py: 0.1).")
  min_images = data.get("validation_min_images", 1)
  if (isinstance(min_images, bool) or not isinstance(min_images, (int, np.integer))
      or min_images < 1):
    raise ConfigError(f"data.validation_min_images={min_images!r} must be a positive integer.")
  pattern = data.get("mask_pattern", folder_lib.DEFAULT_MASK_PATTERN)
  mask_root = str(data.get("mask_root", ""))
  if data.source == "mvtec" and (pattern != folder_lib.DEFAULT_MASK_PATTERN or mask_root):
    raise ConfigError(f"data.mask_pattern={pattern!r} / data.mask_root={mask_root!r} apply to "
                      "data.source='folder' only: MVTec AD's masks are always "
                      f"ground_truth/<defect>/{folder_lib.DEFAULT_MASK_PATTERN}.")
  folder_lib.check_mask_pattern(pattern)
  max_textures = data.get("max_textures", 0)
  if (isinstance(max_textures, bool) or not isinstance(max_textures, (int, np.integer))
      or max_textures < 0):
    raise ConfigError(f"data.max_textures={max_textures!r} must be an integer >= 0 (0 = every "
                      "texture under data.texture_root).")


def texture_paths(config: ml_collections.ConfigDict) -> list[str]:
  """The anomaly-source textures of a run: data.texture_root's images, or the fixed subset of
  data.max_textures of them (`textures.select_textures`)."""
  return textures_lib.select_textures(textures_lib.list_textures(config.data.texture_root),
                                      int(config.data.get("max_textures", 0)))


def _model_hw(value, field: str) -> tuple[int, int]:
  """(height, width) of a side or pair that the networks accept; ConfigError naming `field`."""
  try:
    hw = images_lib.size_hw(value, field)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if min(hw) <= 0 or hw[0] % SIZE_MULTIPLE or hw[1] % SIZE_MULTIPLE:
    raise ConfigError(
        f"{field}={value!r} is not supported: the discriminative U-Net pools 5 times, so "
        f"each side must be a positive multiple of {SIZE_MULTIPLE} (e.g. 256 or (256, 512)).")
  return hw


def preprocess(config: ml_collections.ConfigDict) -> images_lib.Preprocess:
  """The resize every image of the run goes through (data.image_size, resize,
  resize_antialias): training, evaluation, validation, predict.py and the exported model."""
  return images_lib.Preprocess.from_config(config.data)


def image_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(height, width) of the resized images (data.image_size)."""
  return images_lib.size_hw(config.data.image_size)


def crop_hw(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(height, width) of the training crops (data.crop_size), None without crops (0)."""
  crop = config.data.get("crop_size", 0)
  return None if crop == 0 else images_lib.size_hw(crop, "data.crop_size")


def train_input_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(height, width) the networks train on: the crop, else the whole resized image."""
  return crop_hw(config) or image_hw(config)


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index} must be in [0, {process_count}).")


def _single_category(config: ml_collections.ConfigDict) -> str:
  category = config.data.category
  if config.data.source == "mvtec" and category == "all":
    raise ConfigError("data.category='all' names 15 runs: set data.category to one category "
                      "per run (the trainer loops over mvtec.CATEGORIES).")
  return category


def _tfds_data_dir(config: ml_collections.ConfigDict) -> str | None:
  return config.data.tfds_data_dir or None


def _train_list(config: ml_collections.ConfigDict):
  value = config.data.get("train_list", "")
  return value if isinstance(value, str) else tuple(value)


def _root(config: ml_collections.ConfigDict) -> Path:
  """data.root; for MVTec AD an empty root means TFDS's default manual dir."""
  if config.data.source == "mvtec":
    return _mvtec().resolve_root(config.data.root, _tfds_data_dir(config))
  return Path(os.path.expandvars(str(config.data.root))).expanduser()


def holdout_key(file_name: str) -> float:
  """A training image's place in [0, 1) for the validation split: the first 8 bytes of the
  SHA-256 of its file name (relative to the data root), as a fraction of 2^64."""
  digest = hashlib.sha256(file_name.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_indices(file_names: Sequence[str], config: ml_collections.ConfigDict,
                    process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """The training and validation indices into the sorted training images.

  An image is held out when `holdout_key(its file name)` is below data.validation_fraction:
  membership is a property of each file alone, so adding or removing other images never moves
  an image between the two parts (a run that grows its folder keeps its held-out images
  held out), and the hash spreads the held-out images over the folder whatever its naming.
  When fewer than data.validation_min_images fall below the fraction, the images with the
  smallest keys are added up to that number. A resumed run, evaluate.py and predict.py find
  the same split; the trainer records it in `<workdir>/validation_files.json`.

  Args:
    file_names: the training images' names before the split (all of train/good or
      train_list), relative to the data root.
    config: the experiment config (data.validation_fraction, data.validation_min_images).
    process_count: processes that will share the training images (each needs one).

  Returns:
    (train, validation): sorted int64 index arrays, disjoint, together
    range(len(file_names)); validation is empty when the fraction is 0.

  Raises:
    DataError: the split would leave fewer than `process_count` (at least 1) training images.
  """
  num_images = len(file_names)
  fraction = float(config.data.get("validation_fraction", 0.0))
  held = np.zeros(num_images, bool)
  if fraction > 0.0:
    keys = np.asarray([holdout_key(name) for name in file_names], np.float64)
    held = keys < fraction
    minimum = int(config.data.get("validation_min_images", 1))
    if held.sum() < minimum:
      held[np.argsort(keys, kind="stable")[:minimum]] = True
  n = int(held.sum())
  if num_images - n < max(1, process_count):
    raise DataError(
        f"data.validation_fraction={config.data.validation_fraction} holds out {n} of the "
        f"{num_images} training images (at least data.validation_min_images="
        f"{config.data.validation_min_images}), leaving too few to train on; add images, or "
        "lower data.validation_fraction / data.validation_min_images (0 = no validation split).")
  return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


class SubsetSplit:
  """The samples `indices` of a split reader, in that order (the reader's interface)."""

  def __init__(self, reader, indices: np.ndarray):
    self.base, self.indices = reader, np.asarray(indices, np.int64)
    self.has_masks = reader.has_masks
    self.labels = np.asarray(reader.labels)[self.indices]
    self.defect_types = [reader.defect_types[i] for i in self.indices]
    self.file_names = [reader.file_names[i] for i in self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def name(self, index: int) -> str:
    return self.base.name(int(self.indices[index]))

  def read(self, index: int):
    return self.base.read(int(self.indices[index]))


def has_validation_split(config: ml_collections.ConfigDict) -> bool:
  """Whether part of train/good is held out for the thresholds (data.validation_fraction > 0)."""
  return float(config.data.get("validation_fraction", 0.0)) > 0.0


def _test_scan_args(config: ml_collections.ConfigDict) -> dict[str, str]:
  return {"mask_pattern": config.data.get("mask_pattern", folder_lib.DEFAULT_MASK_PATTERN),
          "mask_root": str(config.data.get("mask_root", ""))}


def open_split(config: ml_collections.ConfigDict, split: str):
  """Random access to the encoded samples of a split, in their stable sorted order.

  For data.source="mvtec" the category is prepared into ArrayRecord first if needed. With
  data.validation_fraction > 0, "train" holds only the training part of train/good and
  "validation" the held-out part (`holdout_indices`): the training pipeline cannot see a
  validation image because its reader does not contain one.

  Args:
    config: the experiment config.
    split: "train", "validation" or "test".

  Returns:
    `mvtec.PreparedSplit` or `folder.FolderSplit`: len(), read(i) -> (image, mask or None)
    as path or encoded bytes, name(i), labels, defect_types, file_names, has_masks.
  """
  _check_config(config)
  if split not in ("train", "validation", "test"):
    raise ValueError(f"split={split!r} must be 'train', 'validation' or 'test'.")
  category = _single_category(config)
  if split in ("train", "validation"):
    if split == "validation" and not has_validation_split(config):
      raise ConfigError("data.validation_fraction=0: there is no validation split; set it to "
                        "e.g. 0.1 to hold out part of train/good.")
    reader = _open_encoded(config, category, "train")
    if not has_validation_split(config):
      return reader
    train, validation = holdout_indices(reader.file_names, config)
    return SubsetSplit(reader, train if split == "train" else validation)
  return _open_encoded(config, category, "test")


def _open_encoded(config: ml_collections.ConfigDict, category: str, split: str):
  """The whole "train" or "test" split as stored (no validation hold-out)."""
  if config.data.source == "mvtec":
    _mvtec().prepare(category, _root(config), _tfds_data_dir(config))
    return _mvtec().PreparedSplit(category, _tfds_data_dir(config), split)
  root = _root(config)
  if config.data.source == "dagm":
    return folder_lib.FolderSplit(dagm_lib.scan(root, category, split))
  if not root.is_dir():
    raise DataError(f"Data folder {root} (data.root) does not exist. Expected layout: "
                    f"{folder_lib.LAYOUT}.")
  if split == "train":
    return folder_lib.FolderSplit(folder_lib.scan_train(root, _train_list(config)))
  test = folder_lib.scan_test(root, **_test_scan_args(config))
  return folder_lib.FolderSplit(test.samples, test.has_masks)


def has_test_split(config: ml_collections.ConfigDict) -> bool:
  """Whether there is a test split to evaluate on (always for MVTec AD; `<root>/test` for a
  folder, `<root>/<class>/Test` for DAGM)."""
  _check_config(config)
  if config.data.source == "dagm":
    return (_root(config) / str(config.data.category) / dagm_lib.SPLITS["test"]).is_dir()
  return config.data.source == "mvtec" or (_root(config) / "test").is_dir()


def _mvtec_train_names(config: ml_collections.ConfigDict, category: str,
                       check_test: bool) -> list[str] | int:
  """A category's training images: their file names (relative to the category folder), from
  the prepared data, else by scanning its folder; only their number without a validation
  split (the prepared data's metadata, no records read)."""
  if _mvtec().is_prepared(category, _tfds_data_dir(config)):
    if not has_validation_split(config):
      return _mvtec().builder(category, _tfds_data_dir(config)).info.splits["train"].num_examples
    return list(_mvtec().PreparedSplit(category, _tfds_data_dir(config), "train").file_names)
  category_root = _mvtec().check_category_root(_root(config), category)
  if check_test:
    folder_lib.scan_test(category_root)
  return [s.file_name for s in folder_lib.scan_train(category_root)]


def _num_held_in(names: list[str] | int, config: ml_collections.ConfigDict,
                 process_count: int = 1) -> int:
  """Training images left after the validation split (`names` or, without one, a count)."""
  if isinstance(names, int):
    return names
  return len(holdout_indices(names, config, process_count)[0])


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  """Training images of the whole data set (all processes together), without the validation
  images; no decoding."""
  _check_config(config)
  category = _single_category(config)
  if config.data.source == "mvtec":
    return _num_held_in(_mvtec_train_names(config, category, check_test=False), config)
  return len(open_split(config, "train"))


def split_file_names(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """{'train': [...], 'validation': [...]}: the file names of both parts of train/good (the
  validation part empty without a validation split), in file-name order."""
  train = list(open_split(config, "train").file_names)
  held_out = (list(open_split(config, "validation").file_names)
              if has_validation_split(config) else [])
  return {"train": train, "validation": held_out}


def validate_data_config(config: ml_collections.ConfigDict, process_count: int = 1,
                         require_test: bool = True) -> None:
  """Checks the data settings and files cheaply (listings and image headers, no decoding).

  Call it before any compute: a bad field raises ConfigError naming it, missing or malformed
  data raises DataError naming the path and the expected layout.

  Args:
    config: the experiment config (data, train.batch_size, eval.batch_size are read).
    process_count: number of JAX processes that will share the training batch.
    require_test: `<root>/test` of a folder data set must exist (always present for MVTec
      AD). Without, a test split that exists is still checked (masks, mask names, sizes): the
      run evaluates on it after training, and a bad mask must not wait until then.
  """
  _check_config(config, process_count)
  data = config.data
  categories = (mvtec_info.CATEGORIES if data.source == "mvtec" and data.category == "all"
                else (data.category,))
  for category in categories:
    if data.source == "mvtec":
      names = _mvtec_train_names(config, category, check_test=True)
    elif data.source == "dagm":
      names = [s.file_name for s in dagm_lib.scan(_root(config), category, "train")]
      if require_test:
        dagm_lib.scan(_root(config), category, "test")
    else:
      root = _root(config)
      if not root.is_dir():
        raise DataError(f"Data folder {root} (data.root) does not exist. Expected layout: "
                        f"{folder_lib.LAYOUT}.")
      names = [s.file_name for s in folder_lib.scan_train(root, _train_list(config))]
      if require_test or (root / "test").is_dir():
        folder_lib.scan_test(root, **_test_scan_args(config))
    num_train = _num_held_in(names, config, process_count)
    if num_train < process_count:
      raise DataError(f"{num_train} training images cannot be shared by {process_count} "
                      "processes; every process needs at least one.")
  texture_paths(config)


# ------------------------------------------------------------------------------------------
# Decoding, and the decoded cache.


def _decode_resized(data, name: str, pre: images_lib.Preprocess) -> np.ndarray:
  return pre.image(images_lib.decode_image(data, name))


def _as_preprocess(size) -> images_lib.Preprocess:
  return size if isinstance(size, images_lib.Preprocess) else images_lib.Preprocess(size)


class _TrainImages:
  """Training image i as uint8 (H, W, 3) through `Preprocess` `pre`, decoded on demand
  (picklable)."""

  def __init__(self, reader, pre: images_lib.Preprocess):
    self.reader, self.pre = reader, _as_preprocess(pre)

  def __len__(self) -> int:
    return len(self.reader)

  def __getitem__(self, index: int) -> np.ndarray:
    return _decode_resized(self.reader.read(index)[0], self.reader.name(index), self.pre)


class _Textures:
  """Texture i as uint8 (h, w, 3), stretched to the simulator's size (picklable)."""

  def __init__(self, paths: list[str], pre: images_lib.Preprocess):
    self.paths, self.pre = paths, _as_preprocess(pre)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> np.ndarray:
    return _decode_resized(self.paths[index], self.paths[index], self.pre)


class _EvalSamples:
  """Test sample i: image uint8 (H, W, 3) and mask float32 (H, W) in [0, 1] (`Preprocess`)."""

  def __init__(self, reader, pre: images_lib.Preprocess):
    self.reader, self.pre = reader, _as_preprocess(pre)
    self.size = self.pre.size

  def __len__(self) -> int:
    return len(self.reader)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    image_data, mask_data = self.reader.read(index)
    name = self.reader.name(index)
    image = images_lib.decode_image(image_data, name)
    if mask_data is None:
      mask = np.zeros(self.size, np.float32)
    else:
      full = images_lib.decode_mask(mask_data, f"the mask of {name}")
      if full.shape != image.shape[:2]:
        raise DataError(f"The mask of {name} is {full.shape[1]}x{full.shape[0]} but the image is "
                        f"{image.shape[1]}x{image.shape[0]}; they must match.")
      mask = self.pre.mask(full)
    return self.pre.image(image), mask


# Decoded arrays, keyed by what was decoded and the size, so that the trainer, the evaluator
# and tests that build several pipelines decode each set once per process. Bounded (LRU).
_CACHE: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_CACHE_ENTRIES = 6
_CACHE_LOCK = threading.Lock()


def _decode_all(table, what: str) -> Any:
  """Decodes table[0..n) into stacked arrays, in threads (Pillow releases the GIL for part of
  the work). Entries are arrays, or tuples of arrays (then a tuple of stacks is returned)."""
  n = len(table)
  first = table[0]
  is_tuple = isinstance(first, tuple)
  parts = first if is_tuple else (first,)
  out = tuple(np.empty((n,) + a.shape, a.dtype) for a in parts)

  def fill(i: int) -> None:
    value = first if i == 0 else table[i]
    for dst, src in zip(out, value if is_tuple else (value,)):
      dst[i] = src

  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    list(pool.map(fill, range(n)))  # list() re-raises the first DataError.
  logging.info("Decoded %d %s into memory (%.1f MB).", n, what,
               sum(a.nbytes for a in out) / 2**20)
  return out if is_tuple else out[0]


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
  with _CACHE_LOCK:
    if key in _CACHE:
      _CACHE.move_to_end(key)
      return _CACHE[key]
  value = build()
  with _CACHE_LOCK:
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_ENTRIES:
      _CACHE.popitem(last=False)
  return value


def _reader_key(config: ml_collections.ConfigDict, reader, split: str) -> tuple:
  if isinstance(reader, SubsetSplit):
    return _reader_key(config, reader.base, split) + (tuple(reader.indices.tolist()),)
  if config.data.source == "mvtec" and isinstance(reader, _mvtec().PreparedSplit):
    return ("mvtec", _tfds_data_dir(config), config.data.category, split)
  return ("folder", split, tuple(reader.read(i)[0] for i in range(len(reader))))


def clear_cache() -> None:
  """Drops the decoded arrays kept by this process."""
  with _CACHE_LOCK:
    _CACHE.clear()


# ------------------------------------------------------------------------------------------
# grain transforms (module level: worker processes start with spawn and unpickle them).


class _DrawTexture(grain.transforms.RandomMap):
  """index -> (index, texture index ~ U{0..num_textures-1}) with grain's per-element rng."""

  def __init__(self, num_textures: int):
    self.num_textures = num_textures

  def random_map(self, index, rng: np.random.Generator):
    return int(index), int(rng.integers(self.num_textures))


class _LoadRows(grain.transforms.Map):
  """A global batch of (image indices (B,), texture indices (B,)) -> this process's rows.

  Returns {'image', 'texture'} uint8 (b, H, W, 3) for rows [start, start + b).
  """

  def __init__(self, images, textures, start: int, size: int):
    self.images, self.textures = images, textures
    self.start, self.size = start, size

  def map(self, pairs):
    image_index, texture_index = (np.asarray(a)[self.start:self.start + self.size]
                                  for a in pairs)
    return {"image": _gather(self.images, image_index),
            "texture": _gather(self.textures, texture_index)}


def _gather(table, index: np.ndarray) -> np.ndarray:
  """table[index] for a decoded array (a gather) or a lazy table (decodes only these rows)."""
  if isinstance(table, np.ndarray):
    return table[index]
  return np.stack([table[int(i)] for i in index])


class _LoadEval(grain.transforms.Map):
  """Global test index (or -1 for padding) -> one row of an eval batch."""

  def __init__(self, samples, labels, defect_types, file_names, size: tuple[int, int]):
    self.samples, self.size = samples, size
    self.labels, self.defect_types, self.file_names = labels, defect_types, file_names

  def map(self, index):
    index = int(index)
    if index < 0:
      return {"image": np.zeros((*self.size, 3), np.uint8),
              "mask": np.zeros(self.size, np.float32),
              "label": np.int32(0), "defect_type": "", "file_name": "",
              "index": np.int32(-1), "valid": np.bool_(False)}
    if isinstance(self.samples, tuple):  # The decoded cache: (images, masks) arrays.
      image, mask = self.samples[0][index], self.samples[1][index]
    else:
      image, mask = self.samples[index]
    return {"image": image, "mask": mask, "label": np.int32(self.labels[index]),
            "defect_type": self.defect_types[index], "file_name": self.file_names[index],
            "index": np.int32(index), "valid": np.bool_(True)}


# ------------------------------------------------------------------------------------------
# Training.


def _pre_key(pre: images_lib.Preprocess) -> tuple:
  return (pre.size, pre.mode, pre.antialias)


def texture_preprocess(config: ml_collections.ConfigDict,
                       hw: tuple[int, int] | None = None) -> images_lib.Preprocess:
  """Textures are stretched to the size the simulator works at (default: the training input,
  i.e. the crop when data.crop_size is set), with the images' resize kernel."""
  return images_lib.Preprocess(hw or train_input_hw(config), "stretch",
                               bool(config.data.get("resize_antialias", False)))


def _train_sources(config: ml_collections.ConfigDict, cache: bool):
  """(images, textures): random-access uint8 tables, decoded or lazy: images (H, W, 3) at
  data.image_size, textures (h, w, 3) at the training input size (`texture_preprocess`)."""
  pre, texture_pre = preprocess(config), texture_preprocess(config)
  reader = open_split(config, "train")
  paths = texture_paths(config)
  images = _TrainImages(reader, pre)
  textures = _Textures(paths, texture_pre)
  if cache:
    images = _cached(_reader_key(config, reader, "train") + _pre_key(pre),
                     lambda: _decode_all(images, "training images"))
    textures = _cached(("textures", tuple(paths)) + _pre_key(texture_pre),
                       lambda: _decode_all(textures, "textures"))
  return images, textures


def validation_sources(config: ml_collections.ConfigDict
                       ) -> tuple[np.ndarray, list[str], list[str]]:
  """The held-out validation images, decoded, and the texture paths (see `open_split`).

  Returns:
    images: uint8 (N, H, W, 3) at data.image_size, in file-name order (cached in memory);
    file_names: (N,) their names relative to the data root;
    texture_paths: the run's anomaly-source texture files (`texture_paths`), sorted.
  """
  pre = preprocess(config)
  reader = open_split(config, "validation")
  images = _TrainImages(reader, pre)
  decoded = _cached(_reader_key(config, reader, "validation") + _pre_key(pre),
                    lambda: _decode_all(images, "validation images"))
  return decoded, list(reader.file_names), texture_paths(config)


def sample_train_images(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
  """uint8 (min(count, N), H, W, 3): training images spread evenly over the sorted training
  split (held-out validation images excluded), decoded and resized as for training."""
  if count < 1:
    raise ConfigError(f"count={count} training images: ask for at least 1.")
  table = _TrainImages(open_split(config, "train"), preprocess(config))
  index = np.unique(np.linspace(0, len(table) - 1, min(count, len(table))).round().astype(int))
  return np.stack([table[int(i)] for i in index])


def load_textures(paths: list[str], size) -> np.ndarray:
  """uint8 (len(paths), h, w, 3): textures decoded and resized by `size`, a side, a (height,
  width) or a `Preprocess` (`texture_preprocess`)."""
  table = _Textures(list(paths), size)
  return np.stack([table[i] for i in range(len(table))])


def make_train_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0,
                       process_count: int = 1, cache: bool | None = None,
                       num_workers: int | None = None) -> grain.IterDataset:
  """The training pipeline as a grain IterDataset (see `make_train_iterator`).

  Args:
    config: the experiment config.
    process_index, process_count: this process and the number of processes.
    cache: override data.cache_decoded (benchmarks).
    num_workers: override data.num_workers (benchmarks); with the cache on, the configured
      value is ignored (the pipeline runs in the main process), an explicit value is not.

  Returns:
    grain.IterDataset of batch dicts; `iter()` of it is what `make_train_iterator` returns.
  """
  _check_config(config, process_count, batch_fields=("train",))
  _check_process(process_index, process_count)
  cache = config.data.get("cache_decoded", True) if cache is None else cache
  if num_workers is None:
    num_workers = 0 if cache else config.data.num_workers
  global_batch = config.train.batch_size
  local_batch = global_batch // process_count
  images, textures = _train_sources(config, cache)
  if len(images) < process_count:
    raise DataError(f"{len(images)} training images cannot be shared by {process_count} "
                    "processes; every process needs at least one.")
  # One global stream of (image index, texture index) pairs, the same on every process and for
  # every process count: global shuffle (reshuffled each epoch), repeat, texture draws, global
  # batches. All of it is index arithmetic; each process then LOADS only its rows
  # [p*b, (p+1)*b) of every global batch. So the global batch is a function of (seed, step)
  # alone (P processes x D devices trains like 1 process x P*D devices), the processes see
  # disjoint parts of the images within an epoch, and another process count would see the same
  # stream re-split (checkpointing still refuses such a resume). The seed is the one
  # single-process runs always used.
  seed = int(np.random.SeedSequence([config.train.seed, 0]).generate_state(1)[0])
  ds = grain.MapDataset.range(len(images)).seed(seed).shuffle().repeat(None)
  ds = ds.random_map(_DrawTexture(len(textures)))
  ds = ds.batch(global_batch, drop_remainder=True)
  ds = ds.map(_LoadRows(images, textures, process_index * local_batch, local_batch))
  buffer = config.data.prefetch_buffer_size
  # Threads overlap loading with the training step; with worker processes each has its own.
  read_threads = 1 if cache else 2
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=max(buffer, read_threads)))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=buffer))
  return it_ds


def make_train_iterator(config: ml_collections.ConfigDict, *, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """An endless iterator of this process's training batches.

  Each batch is a dict of host-local numpy arrays, b = train.batch_size // process_count:
    'image':   uint8 (b, H, W, 3), clean training images at data.image_size (the train step
               cuts the data.crop_size crops);
    'texture': uint8 (b, S, S, 3), anomaly-source textures drawn uniformly, one per image.
  The global batch depends only on (data, train.seed, step), not on process_count or
  data.num_workers; this process's batch is its rows [p*b, (p+1)*b) of it. Within an epoch the
  processes load disjoint images; with the decoded cache each still decodes the whole training
  set once, since the global shuffle gives it other images in later epochs. `it.get_state()` /
  `it.set_state(state)` (or Orbax with
  `grain.checkpoint.CheckpointSave/CheckpointRestore`) resume it exactly. With worker
  processes (data.num_workers > 0 and data.cache_decoded False), absl flags must be parsed
  (absl.app.run); close the iterator (`it.close()`, a no-op without workers) when done.

  Args:
    config: the experiment config.
    process_index: jax.process_index().
    process_count: jax.process_count(); each process loads its rows of each global batch.

  Returns:
    grain.DatasetIterator of batch dicts.
  """
  return iter(make_train_dataset(config, process_index=process_index,
                                 process_count=process_count))


# ------------------------------------------------------------------------------------------
# Evaluation.


class EvalDataset:
  """The test split in a fixed order, as padded batches, plus original-resolution access.

  Iterating yields dicts of host-local numpy arrays (B = global_batch_size // process_count):
    'image':       uint8 (B, H, W, 3) at data.image_size (`preprocess`);
    'mask':        float32 (B, H, W), the 0/1 mask resized like its image (bilinear, no
                   antialiasing, unless data.resize_antialias);
                   the evaluator thresholds it (paper: >= 1 - 0.5/255; standard: >= 0.5);
                   zeros for good images and when `has_masks` is False;
    'label':       int32 (B,), 1 = defective;
    'defect_type': str (B,), 'file_name': str (B,);
    'index':       int32 (B,), position in the sorted test split (-1 for padding);
    'valid':       bool (B,), False for the padding of the last batch.

  Attributes:
    num_examples: test samples (each appears exactly once over all batches).
    num_batches: batches per pass.
    has_masks: whether pixel-level ground truth exists (False: image-level metrics only).
    labels: int32 (N,); defect_types, file_names: str (N,), in the batch order.
  """

  def __init__(self, reader, config: ml_collections.ConfigDict, process_index: int,
               process_count: int, cache: bool, global_batch_size: int):
    self._reader = reader
    self._config = config
    self.image_size = config.data.image_size
    self.preprocess = preprocess(config)
    self.global_batch_size = global_batch_size
    self.batch_size = global_batch_size // process_count
    self.num_examples = len(reader)
    self.num_batches = -(-self.num_examples // self.global_batch_size)
    self.has_masks = bool(reader.has_masks)
    self.labels = np.asarray(reader.labels, np.int32)
    self.defect_types = np.asarray(reader.defect_types, dtype=str)
    self.file_names = np.asarray(reader.file_names, dtype=str)
    self._process_index, self._process_count = process_index, process_count
    self._cache = cache
    self._threads = max(1, min(4, config.data.num_workers))

  def __len__(self) -> int:
    return self.num_batches

  def _indices(self) -> list[int]:
    """This process's rows of every global batch; -1 marks padding past the last sample."""
    return [int(i) for rows in padding.batch_indices(
        self.num_examples, self.global_batch_size, self._process_index, self._process_count)
            for i in rows]

  def _samples(self):
    samples = _EvalSamples(self._reader, self.preprocess)
    if self._cache:
      key = _reader_key(self._config, self._reader, "test") + _pre_key(self.preprocess)
      return _cached(key, lambda: _decode_all(samples, "test images"))
    return samples

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    load = _LoadEval(self._samples(), self.labels, self.defect_types, self.file_names,
                     self.preprocess.size)
    ds = grain.MapDataset.source(self._indices()).map(load).batch(self.batch_size)
    threads = 1 if self._cache else self._threads
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=max(2, threads))))

  def original(self, index: int) -> dict[str, Any]:
    """Sample `index` at its original resolution (AU-PRO at full resolution, overlays).

    Returns:
      {'image': uint8 (H, W, 3), 'mask': uint8 (H, W) of 0/1 (zeros for good images or
      without masks), 'label': int, 'defect_type': str, 'file_name': str}.
    """
    if not 0 <= index < self.num_examples:
      raise IndexError(f"test index {index} out of range [0, {self.num_examples}).")
    image_data, mask_data = self._reader.read(index)
    name = self._reader.name(index)
    image = images_lib.decode_image(image_data, name)
    if mask_data is None:
      mask = np.zeros(image.shape[:2], np.uint8)
    else:
      mask = images_lib.decode_mask(mask_data, f"the mask of {name}")
    return {"image": image, "mask": mask, "label": int(self.labels[index]),
            "defect_type": str(self.defect_types[index]),
            "file_name": str(self.file_names[index])}


def make_eval_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0,
                      process_count: int = 1, num_devices: int | None = None) -> EvalDataset:
  """The test split for evaluation (see `EvalDataset` for the batch format).

  Global batches hold B = eval.batch_size rounded up to a multiple of `num_devices` rows
  (`padding.padded_batch_size`). With several processes, each yields its rows
  [p*B/P, (p+1)*B/P) of every global batch, so that every process runs the same number of
  steps and the global batch is the processes' batches concatenated in process order.

  Args:
    config: the experiment config.
    process_index, process_count: this process and the number of processes.
    num_devices: devices the batches are sharded over (default: one per process).

  Returns:
    EvalDataset (iterable, re-iterable; `original(i)`, `num_examples`, `has_masks`).

  Raises:
    DataError: no test split (a folder data set without `<root>/test`), or a malformed one.
  """
  _check_config(config, process_count, batch_fields=())
  _check_process(process_index, process_count)
  value = config.eval.batch_size
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"eval.batch_size={value!r} must be a positive integer.")
  num_devices = process_count if num_devices is None else num_devices
  if num_devices % process_count:
    raise ValueError(f"num_devices={num_devices} must be a multiple of the number of processes "
                     f"({process_count}).")
  global_batch = padding.padded_batch_size(config.eval.batch_size, num_devices)
  cache = config.data.get("cache_decoded", True)
  return EvalDataset(open_split(config, "test"), config, process_index, process_count, cache,
                     global_batch)


load_image = images_lib.load_image
