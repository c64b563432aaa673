"""The MVTec AD TFDS builder: prepared to ArrayRecord and read back without TensorFlow."""

import collections
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from draem_jax.data import images
from draem_jax.data import mvtec
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _load_config_module(name: str):
  spec = importlib.util.spec_from_file_location(f"test_cfg_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bottle(shared_data, tmp_path_factory):
  """bottle prepared once for this module into a temporary TFDS data dir."""
  data_dir = tmp_path_factory.mktemp("tfds")
  mvtec.prepare("bottle", shared_data / "mvtec_ad", data_dir)
  return data_dir


def test_categories_and_counts_match_config_and_release():
  assert mvtec.CATEGORIES == _load_config_module("mvtec").MVTEC_CATEGORIES
  assert set(mvtec.EXPECTED_COUNTS) == set(mvtec.CATEGORIES)
  # The MVTec AD paper (Bergmann et al., IJCV 2021): 3,629 training and 1,725 test images.
  assert sum(c[0] for c in mvtec.EXPECTED_COUNTS.values()) == 3629
  assert sum(c[1] for c in mvtec.EXPECTED_COUNTS.values()) == 1725


def test_bottle_prepares_and_reads_back(bottle, shared_data):
  builder = mvtec.builder("bottle", bottle)
  assert mvtec.is_prepared("bottle", bottle)
  assert builder.info.splits["train"].num_examples == 209
  assert builder.info.splits["test"].num_examples == 83
  files = [p.name for p in Path(builder.data_dir).iterdir()]
  assert "mvtec_ad-train.array_record-00000-of-00001" in files

  train = mvtec.PreparedSplit("bottle", bottle, "train")
  assert len(train) == 209 and train.file_names == sorted(train.file_names)
  assert (train.labels == 0).all()

  test = mvtec.PreparedSplit("bottle", bottle, "test")
  assert collections.Counter(test.defect_types) == {
      "good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
  assert int((test.labels == 1).sum()) == 63
  keys = list(zip(test.defect_types, test.file_names))
  assert keys == sorted(keys)

  category = shared_data / "mvtec_ad" / "bottle"
  for i in range(len(test)):
    image_bytes, mask_bytes = test.read(i)
    name = Path(test.file_names[i])
    # RGB PNGs are stored verbatim: byte-identical to the original file.
    assert image_bytes == (category / name).read_bytes()
    mask = np.asarray(Image.open(io.BytesIO(mask_bytes)))
    if test.labels[i]:
      original = np.asarray(Image.open(
          category / "ground_truth" / test.defect_types[i] / f"{name.stem}_mask.png"))
      np.testing.assert_array_equal(mask > 0, original > 0)
      assert (mask > 0).sum() > 0
    else:
      assert mask.shape == (900, 900) and not mask.any()
  assert train.read(0)[0] == (category / train.file_names[0]).read_bytes()
  # Reading prepared data never imports TensorFlow.
  assert "tensorflow" not in sys.modules


def test_prepared_eval_pipeline_masks_match_pngs(bottle, shared_data):
  config = _load_config_module("mvtec").get_config("bottle")
  config.data.root = str(shared_data / "mvtec_ad")
  config.data.tfds_data_dir = str(bottle)
  config.data.image_size = 64
  config.data.cache_decoded = False
  ev = pipeline.make_eval_dataset(config)
  assert ev.num_examples == 83 and ev.has_masks
  sample = int(np.flatnonzero(ev.defect_types == "broken_small")[3])
  original = ev.original(sample)
  png = np.asarray(Image.open(shared_data / "mvtec_ad" / "bottle" / "ground_truth" / "broken_small"
                              / (Path(ev.file_names[sample]).stem + "_mask.png")))
  np.testing.assert_array_equal(original["mask"], (png > 127).astype(np.uint8))
  assert original["image"].shape == (900, 900, 3)


def test_prepared_data_needs_no_original_folders(bottle, shared_data, tmp_path):
  config = _load_config_module("mvtec").get_config("bottle")
  config.data.root = str(tmp_path / "originals_deleted")
  config.data.tfds_data_dir = str(bottle)
  config.data.texture_root = str(shared_data / "dtd" / "images" / "banded")
  pipeline.validate_data_config(config)
  assert pipeline.num_train_examples(config) == 209
  assert pipeline.make_eval_dataset(config).num_examples == 83
  config.data.category = "all"  # The other 14 categories are neither prepared nor present.
  with pytest.raises(DataError, match=r"originals_deleted/cable does not exist"):
    pipeline.validate_data_config(config)
  with pytest.raises(ConfigError, match=r"data.category='all' names 15 runs"):
    pipeline.make_train_iterator(config)


def _gray_category(root: Path, category: str = "grid") -> Path:
  rng = np.random.default_rng(0)
  base = root / category
  for sub, n in (("train/good", 3), ("test/good", 1), ("test/bent", 2)):
    (base / sub).mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8), "L").save(
          base / sub / f"{i:03d}.png")
  (base / "ground_truth" / "bent").mkdir(parents=True)
  for i in range(2):
    mask = np.zeros((40, 48), np.uint8)
    mask[5:10 + i, 7:20] = 255
    Image.fromarray(mask).save(base / "ground_truth" / "bent" / f"{i:03d}_mask.png")
  (base / "license.txt").write_text("stray file, ignored")
  return base


def test_grayscale_category_yields_rgb(tmp_path):
  root = tmp_path / "mvtec"
  base = _gray_category(root)
  mvtec.prepare("grid", root, tmp_path / "tfds")  # Counts differ from the release: a warning.
  train = mvtec.PreparedSplit("grid", tmp_path / "tfds", "train")
  assert len(train) == 3
  stored = Image.open(io.BytesIO(train.read(0)[0]))
  assert stored.mode == "RGB"
  gray = np.asarray(Image.open(base / "train" / "good" / "000.png"))
  np.testing.assert_array_equal(np.asarray(stored), np.repeat(gray[..., None], 3, -1))
  test = mvtec.PreparedSplit("grid", tmp_path / "tfds", "test")
  assert test.defect_types == ["bent", "bent", "good"] and list(test.labels) == [1, 1, 0]
  mask = images.decode_mask(test.read(1)[1])
  assert mask.shape == (40, 48) and mask.sum() == 6 * 13


def test_missing_category_folder_raises_with_instructions(tmp_path):
  with pytest.raises(DataError, match=r"(?s)bottle does not exist.*mvtec.com.*<root>/bottle/train"):
    mvtec.prepare("bottle", tmp_path / "nowhere", tmp_path / "tfds")
  (tmp_path / "bottle.tar.xz").write_bytes(b"")
  with pytest.raises(DataError, match=r"holds bottle.tar.xz: extract it"):
    mvtec.prepare("bottle", tmp_path, tmp_path / "tfds")
  # An empty root means the TFDS manual dir.
  with pytest.raises(DataError, match=r"tfds/downloads/manual/bottle does not exist"):
    mvtec.prepare("bottle", "", tmp_path / "tfds")
  with pytest.raises(DataError, match="Unknown MVTec AD category 'bottel'"):
    mvtec.prepare("bottel", tmp_path, tmp_path / "tfds")


def test_corrupt_image_fails_preparation_naming_it(tmp_path):
  root = tmp_path / "mvtec"
  base = _gray_category(root, "screw")
  rgb = np.zeros((40, 48, 3), np.uint8)
  Image.fromarray(rgb).save(base / "train" / "good" / "003.png")
  data = (base / "train" / "good" / "003.png").read_bytes()
  (base / "train" / "good" / "003.png").write_bytes(data[:-30])  # Cut before the end chunk.
  with pytest.raises(DataError, match=r"003.png"):
    mvtec.prepare("screw", root, tmp_path / "tfds")
