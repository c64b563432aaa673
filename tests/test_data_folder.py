"""Folder data sets, textures and config checks: every bad input raises one clear error."""

import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from draem_jax.data import folder
from draem_jax.data import pipeline
from draem_jax.data import textures
from draem_jax.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _config_module(name: str):
  # As ml_collections.config_flags loads a config file: by path, outside any package.
  loader = importlib.machinery.SourceFileLoader(f"cfg_{name}", str(REPO / "configs" / f"{name}.py"))
  spec = importlib.util.spec_from_loader(loader.name, loader)
  module = importlib.util.module_from_spec(spec)
  loader.exec_module(module)
  return module


def _png(path: Path, hw=(24, 32), value=None, mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
  shape = hw + ((3,) if mode == "RGB" else ())
  array = (rng.integers(0, 256, shape, dtype=np.uint8) if value is None
           else np.full(shape, value, np.uint8))
  Image.fromarray(array, mode).save(path)
  return path


def _mask(path: Path, hw=(24, 32)):
  array = np.zeros(hw, np.uint8)
  array[3:9, 4:12] = 255
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def make_layout(root: Path, masks: bool = True, n_train: int = 4) -> Path:
  for i in range(n_train):
    _png(root / "train" / "good" / f"{i:03d}.png")
  _png(root / "test" / "good" / "000.png")
  for i in range(2):
    _png(root / "test" / "scratch" / f"{i:03d}.png")
    if masks:
      _mask(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
  return root


def _textures(root: Path) -> Path:
  _png(root / "a" / "t0.jpg", mode="L")
  _png(root / "b" / "c" / "t1.PNG")
  return root


def _config(root: Path, textures_root: Path):
  config = _config_module("folder").get_config(str(root))
  # Layouts of 2-4 training images: the held-out validation split is tested in test_validation.
  config.data.validation_fraction = 0.0
  config.data.texture_root = str(textures_root)
  config.data.image_size = 32
  config.train.batch_size = 2
  config.eval.batch_size = 2
  return config


def test_folder_config_loads_by_path_and_sets_source(tmp_path, monkeypatch):
  config = _config_module("folder").get_config(str(tmp_path))
  assert config.data.source == "folder" and config.data.root == str(tmp_path)
  monkeypatch.setenv("DRAEM_FOLDER_ROOT", "/from/env")
  assert _config_module("folder").get_config().data.root == "/from/env"
  assert config.train.batch_size == _config_module("mvtec").get_config().train.batch_size


def test_valid_layout_with_strays_passes(tmp_path):
  root = make_layout(tmp_path / "data")
  (root / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
  (root / "train" / "good" / "readme.txt").write_text("notes")
  (root / "license.txt").write_text("licence")
  (root / "ground_truth" / "scratch" / "Thumbs.db").write_bytes(b"x")
  config = _config(root, _textures(tmp_path / "tex"))
  pipeline.validate_data_config(config)
  assert pipeline.num_train_examples(config) == 4
  test = folder.scan_test(root)
  assert test.has_masks and [s.defect_type for s in test.samples] == ["good", "scratch", "scratch"]
  assert [s.label for s in test.samples] == [0, 1, 1]


def test_missing_root(tmp_path):
  config = _config(tmp_path / "absent", _textures(tmp_path / "tex"))
  with pytest.raises(DataError, match=r"absent \(data.root\) does not exist.*train/good"):
    pipeline.validate_data_config(config)


def test_missing_mvtec_category(tmp_path):
  config = _config_module("mvtec").get_config("carpet")
  config.data.root = str(tmp_path)
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  config.data.texture_root = str(_textures(tmp_path / "tex"))
  with pytest.raises(DataError, match=r"carpet does not exist.*data.category=carpet"):
    pipeline.validate_data_config(config)


def test_unknown_mvtec_category_is_config_error(tmp_path):
  config = _config_module("mvtec").get_config("bottel")
  with pytest.raises(ConfigError, match="data.category='bottel'"):
    pipeline.validate_data_config(config)


def test_empty_train_good(tmp_path):
  root = make_layout(tmp_path / "data", n_train=0)
  (root / "train" / "good").mkdir(parents=True)
  (root / "train" / "good" / ".DS_Store").write_bytes(b"\0")
  (root / "train" / "good" / "license.txt").write_text("x")
  with pytest.raises(DataError, match=r"train/good holds no image"):
    pipeline.validate_data_config(_config(root, _textures(tmp_path / "tex")))


def test_test_image_without_mask(tmp_path):
  root = make_layout(tmp_path / "data")
  _png(root / "test" / "scratch" / "002.png")
  with pytest.raises(DataError, match=r"scratch/002.png has no mask .*002_mask.png"):
    pipeline.validate_data_config(_config(root, _textures(tmp_path / "tex")))


def test_mask_without_image(tmp_path):
  root = make_layout(tmp_path / "data")
  _mask(root / "ground_truth" / "scratch" / "007_mask.png")
  with pytest.raises(DataError, match=r"007_mask.png matches no image"):
    pipeline.validate_data_config(_config(root, _textures(tmp_path / "tex")))


def test_mask_size_differs_from_image(tmp_path):
  root = make_layout(tmp_path / "data")
  _mask(root / "ground_truth" / "scratch" / "001_mask.png", hw=(24, 30))
  with pytest.raises(DataError, match=r"001_mask.png is 30x24 but its image .*001.png is 32x24"):
    pipeline.validate_data_config(_config(root, _textures(tmp_path / "tex")))


def test_corrupt_training_image_named_when_decoded(tmp_path):
  root = make_layout(tmp_path / "data")
  (root / "train" / "good" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  config = _config(root, _textures(tmp_path / "tex"))
  with pytest.raises(DataError, match=r"Cannot read image .*train/good/002.png"):
    pipeline.make_train_iterator(config)


def test_empty_texture_folder(tmp_path):
  root = make_layout(tmp_path / "data")
  (tmp_path / "tex" / "sub").mkdir(parents=True)
  (tmp_path / "tex" / "sub" / "readme.txt").write_text("no images here")
  with pytest.raises(DataError, match=r"tex \(data.texture_root\) holds no image"):
    pipeline.validate_data_config(_config(root, tmp_path / "tex"))
  with pytest.raises(DataError, match=r"absent \(data.texture_root\) does not exist"):
    textures.list_textures(tmp_path / "absent")


@pytest.mark.parametrize("size", [0, -32, 100, 250])
def test_unsupported_image_size(tmp_path, size):
  config = _config(make_layout(tmp_path / "data"), _textures(tmp_path / "tex"))
  config.data.image_size = size
  with pytest.raises(ConfigError, match=r"data.image_size=.* multiple of 32"):
    pipeline.validate_data_config(config)


def test_batch_size_must_split_over_processes(tmp_path):
  config = _config(make_layout(tmp_path / "data"), _textures(tmp_path / "tex"))
  config.train.batch_size = 3
  with pytest.raises(ConfigError, match=r"train.batch_size=3 .* processes \(2\)"):
    pipeline.validate_data_config(config, process_count=2)
  with pytest.raises(ConfigError, match=r"train.batch_size=3"):
    pipeline.make_train_iterator(config, process_index=0, process_count=2)


def test_textures_found_recursively_any_case(tmp_path):
  root = _textures(tmp_path / "tex")
  (root / "a" / "notes.txt").write_text("x")
  (root / ".hidden").mkdir()
  _png(root / ".hidden" / "t9.png")
  found = textures.list_textures(root)
  assert [Path(p).name for p in found] == ["t0.jpg", "t1.PNG"]


def test_train_list_replaces_train_good(tmp_path):
  root = make_layout(tmp_path / "data")
  extra = _png(tmp_path / "elsewhere" / "x.png")
  listing = tmp_path / "list.txt"
  listing.write_text(f"# training images\ndata/train/good/001.png\n{extra}\n")
  config = _config(root, _textures(tmp_path / "tex"))
  config.data.train_list = str(listing)
  assert pipeline.num_train_examples(config) == 2
  listing.write_text("data/train/good/404.png\n")
  with pytest.raises(DataError, match=r"404.png \(listed in .*list.txt\) does not exist"):
    pipeline.validate_data_config(config)


def test_no_ground_truth_means_image_level_eval(tmp_path):
  root = make_layout(tmp_path / "data", masks=False)
  config = _config(root, _textures(tmp_path / "tex"))
  config.data.cache_decoded = False
  ev = pipeline.make_eval_dataset(config)
  assert not ev.has_masks and ev.num_examples == 3
  batches = list(ev)
  assert all(not b["mask"].any() for b in batches)
  assert np.concatenate([b["label"][b["valid"]] for b in batches]).tolist() == [0, 1, 1]
  assert pipeline.has_test_split(config)


def test_grayscale_folder_images_are_rgb(tmp_path):
  root = tmp_path / "data"
  for i in range(2):
    _png(root / "train" / "good" / f"{i}.png", mode="L")
  config = _config(root, _textures(tmp_path / "tex"))
  batch = next(pipeline.make_train_iterator(config))
  assert batch["image"].shape == (2, 32, 32, 3) and batch["texture"].shape == (2, 32, 32, 3)
  assert (batch["image"][..., 0] == batch["image"][..., 2]).all()
  assert not pipeline.has_test_split(config)
  pipeline.validate_data_config(config, require_test=False)
  with pytest.raises(DataError, match=r"test does not exist"):
    pipeline.make_eval_dataset(config)


@pytest.mark.parametrize("problem", ["missing_mask", "mask_size", "mask_pattern"])
def test_item2_bad_test_data_stops_training_before_any_compute(tmp_path, problem):
  """configs/folder.py evaluates only at the end (train.eval_every_steps=0); its test split is
  still checked before the first step, not after training."""
  from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top
  root = make_layout(tmp_path / "data")
  config = _config(root, _textures(tmp_path / "tex"))
  assert config.train.eval_every_steps == 0
  config.model.recon_width = config.model.disc_width = 4
  config.train.num_steps, config.train.batch_size = 2, 4
  expected = {"missing_mask": r"scratch/002.png has no mask",
              "mask_size": r"001_mask.png is 30x24 but its image",
              "mask_pattern": r"000_mask.png does not match data.mask_pattern='\{stem\}-gt.png'"}[problem]
  if problem == "missing_mask":
    _png(root / "test" / "scratch" / "002.png")
  elif problem == "mask_size":
    _mask(root / "ground_truth" / "scratch" / "001_mask.png", hw=(24, 30))
  else:
    config.data.mask_pattern = "{stem}-gt.png"
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=expected):
    trainer.train_and_evaluate(config, workdir)
  assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
