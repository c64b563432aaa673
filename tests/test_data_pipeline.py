"""grain pipelines on the real bottle images: determinism, sharding, resuming, eval batches."""

import collections
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from absl import flags
from PIL import Image

from draem_jax.data import images
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config(shared_data):
  """bottle's original PNGs as a folder data set, one DTD class as textures, 64x64."""
  spec = importlib.util.spec_from_file_location("test_cfg_folder", REPO / "configs" / "folder.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(str(shared_data / "mvtec_ad" / "bottle"))
  # All 209 images in training (the held-out validation split is tested in test_validation).
  config.data.validation_fraction = 0.0
  config.data.texture_root = str(shared_data / "dtd" / "images" / "banded")
  config.data.image_size = 64
  config.train.batch_size = 4
  config.eval.batch_size = 8
  return config


def _copy(config, **overrides):
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    group, field = key.split("__")
    config[group][field] = value
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _digest(array: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _index_of(table: np.ndarray) -> dict[str, int]:
  """Maps the hash of each decoded image to its index (all distinct)."""
  index = {_digest(x): i for i, x in enumerate(table)}
  assert len(index) == len(table)
  return index


def test_train_batch_format(config):
  batch = next(pipeline.make_train_iterator(config))
  assert set(batch) == {"image", "texture"}
  for key in batch:
    assert batch[key].shape == (4, 64, 64, 3) and batch[key].dtype == np.uint8
  assert pipeline.num_train_examples(config) == 209
  local = next(pipeline.make_train_iterator(config, process_index=1, process_count=2))
  assert local["image"].shape == (2, 64, 64, 3)


def test_deterministic_for_seed_and_different_across_seeds(config):
  first = _take(pipeline.make_train_iterator(config), 4)
  _assert_same(first, _take(pipeline.make_train_iterator(config), 4))
  other = _take(pipeline.make_train_iterator(_copy(config, train__seed=1)), 4)
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
  assert not all(np.array_equal(a["texture"], b["texture"]) for a, b in zip(first, other))


def test_processes_load_their_rows_of_one_global_stream(config):
  """Each process loads rows [p*b, (p+1)*b) of the global batch: together they are the
  1-process stream, and within an epoch they see disjoint halves of the images."""
  cfg = _copy(config, train__batch_size=2)  # One image per process per step.
  table, _ = pipeline._train_sources(cfg, cache=True)
  index = _index_of(table)
  whole = _take(pipeline.make_train_iterator(cfg), 104)
  parts = [_take(pipeline.make_train_iterator(cfg, process_index=p, process_count=2), 104)
           for p in range(2)]
  for w, p0, p1 in zip(whole, *parts):
    for key in w:
      np.testing.assert_array_equal(w[key], np.concatenate([p0[key], p1[key]]))
  # 104 steps x 2 = 208 of the first epoch's 209 images: halves disjoint, no image twice.
  seen = [[index[_digest(b["image"][0])] for b in part] for part in parts]
  assert len(set(seen[0])) == len(set(seen[1])) == 104
  assert set(seen[0]).isdisjoint(seen[1])
  # Epoch by epoch: positions [0, 209) and [209, 418) of the stream are each a permutation of
  # the 209 images, and the second is another one (reshuffled, not repeated).
  stream = [index[_digest(x)] for b in _take(pipeline.make_train_iterator(cfg), 209)
            for x in b["image"]]
  first, second = stream[:209], stream[209:]
  assert stream[:208] == [index[_digest(x)] for b in whole for x in b["image"]]
  assert len(second) == 209
  assert sorted(first) == sorted(second) == list(range(209))
  assert first != second
  assert sum(a == b for a, b in zip(first, second)) < 10  # ~1 fixed point expected.


def test_textures_drawn_uniformly(config):
  _, textures = pipeline._train_sources(config, cache=True)
  index = _index_of(textures)
  counts = collections.Counter()
  for batch in _take(pipeline.make_train_iterator(config), 600):
    counts.update(index[_digest(t)] for t in batch["texture"])
  observed = np.asarray([counts[i] for i in range(len(textures))])
  assert observed.sum() == 2400 and (observed > 0).all()
  assert scipy.stats.chisquare(observed).pvalue > 1e-3


def test_resume_from_state_gives_the_same_next_batches(config):
  it = pipeline.make_train_iterator(config)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  restored = pipeline.make_train_iterator(config)
  restored.set_state(state)
  _assert_same(expected, _take(restored, 3))


def test_resume_with_orbax_composite_checkpoint(config, tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  it = pipeline.make_train_iterator(config)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 2)
  restored = pipeline.make_train_iterator(config)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same(expected, _take(restored, 2))


def test_decoding_without_cache_gives_the_same_stream(config):
  cached = _take(pipeline.make_train_iterator(config), 2)
  _assert_same(cached, _take(pipeline.make_train_iterator(
      _copy(config, data__cache_decoded=False, data__num_workers=0)), 2))


def test_worker_process_stream_matches_and_resumes(config):
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags.
  cfg = _copy(config, data__cache_decoded=False, data__num_workers=1,
              data__prefetch_buffer_size=1)
  expected = _take(pipeline.make_train_iterator(_copy(cfg, data__num_workers=0)), 4)
  it = pipeline.make_train_iterator(cfg)
  try:
    _assert_same(expected[:2], _take(it, 2))
    state = it.get_state()
  finally:
    it.close()
  restored = pipeline.make_train_iterator(cfg)
  try:
    restored.set_state(state)
    _assert_same(expected[2:], _take(restored, 2))
  finally:
    restored.close()


def test_eval_every_sample_once_in_order_with_padding(config):
  ev = pipeline.make_eval_dataset(config)
  assert (ev.num_examples, ev.num_batches, len(ev), ev.has_masks) == (83, 11, 11, True)
  batches = list(ev)
  assert len(batches) == 11
  for b in batches:
    assert b["image"].shape == (8, 64, 64, 3) and b["image"].dtype == np.uint8
    assert b["mask"].shape == (8, 64, 64) and b["mask"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32
    assert b["valid"].dtype == bool
  valid = np.concatenate([b["valid"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  assert valid.sum() == 83 and not valid[83:].any() and (index[~valid] == -1).all()
  np.testing.assert_array_equal(index[valid], np.arange(83))
  names = np.concatenate([b["file_name"] for b in batches])[valid]
  types = np.concatenate([b["defect_type"] for b in batches])[valid]
  np.testing.assert_array_equal(names, ev.file_names)
  assert list(zip(types, names)) == sorted(zip(types, names))
  labels = np.concatenate([b["label"] for b in batches])[valid]
  assert labels.sum() == 63 and (labels == (types != "good")).all()
  last = batches[-1]
  assert not last["image"][~last["valid"]].any() and not last["mask"][~last["valid"]].any()
  assert not last["label"][~last["valid"]].any()
  # A second pass yields the same batches.
  _assert_same(batches[:1], [next(iter(ev))])


def _pil_mask_reference(mask01: np.ndarray, size: int) -> np.ndarray:
  """Pillow affine transform, bilinear, no antialiasing (see test_data_images)."""
  h, w = mask01.shape
  out = Image.fromarray(mask01.astype(np.float32), mode="F").transform(
      (size, size), Image.Transform.AFFINE, (w / size, 0, 0, 0, h / size, 0),
      resample=Image.Resampling.BILINEAR)
  return np.asarray(out)


def test_eval_masks_and_images_match_independent_reference(config, shared_data):
  ev = pipeline.make_eval_dataset(config)
  batches = list(ev)
  masks = np.concatenate([b["mask"] for b in batches])
  imgs = np.concatenate([b["image"] for b in batches])
  category = shared_data / "mvtec_ad" / "bottle"
  for i in (0, 25, 45, 62):  # broken_large, broken_small, contamination samples.
    name = Path(ev.file_names[i])
    png = np.asarray(Image.open(category / "ground_truth" / ev.defect_types[i]
                                / f"{name.stem}_mask.png"))
    reference = _pil_mask_reference(png / 255.0, 64)
    np.testing.assert_allclose(masks[i], reference, atol=1e-5)
    assert masks[i].max() > 0.99
    # "paper" keeps pixels whose uint8 value would be 255; "standard" is >= 0.5.
    assert (masks[i] >= 1 - 0.5 / 255).sum() <= (masks[i] >= 0.5).sum()
    original = ev.original(i)
    np.testing.assert_array_equal(original["mask"], (png > 127).astype(np.uint8))
    rgb = np.asarray(Image.open(category / name).convert("RGB"))
    np.testing.assert_array_equal(original["image"], rgb)
    np.testing.assert_array_equal(imgs[i], images.resize_bilinear(rgb, 64))
  good = ev.defect_types == "good"
  assert not masks[:83][good].any()


def test_eval_process_shards_reassemble_the_global_batches(config):
  whole = list(pipeline.make_eval_dataset(config))
  parts = [list(pipeline.make_eval_dataset(config, process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  for w, p0, p1 in zip(whole, *parts):
    for key in w:
      np.testing.assert_array_equal(w[key], np.concatenate([p0[key], p1[key]]))
  # eval.batch_size=8 over 3 processes: global batches of 9 rows, 3 per process, the last
  # padded; the processes' real rows together are every test image once, in order.
  thirds = [list(pipeline.make_eval_dataset(config, process_index=p, process_count=3))
            for p in range(3)]
  assert [len(t) for t in thirds] == [10, 10, 10]
  assert all(b["image"].shape[0] == 3 for t in thirds for b in t)
  index = np.concatenate([np.concatenate([t[b]["index"] for t in thirds]) for b in range(10)])
  np.testing.assert_array_equal(index[:83], np.arange(83))
  assert (index[83:] == -1).all()


def test_max_textures_fixed_nested_subset(config):
  from draem_jax.data import textures as textures_lib
  everything = textures_lib.list_textures(config.data.texture_root)
  assert pipeline.texture_paths(config) == everything  # 0 = all.
  subsets = [pipeline.texture_paths(_copy(config, data__max_textures=n)) for n in (1, 3, 10)]
  assert [len(s) for s in subsets] == [1, 3, 10]
  assert set(subsets[0]) <= set(subsets[1]) <= set(subsets[2]) <= set(everything)
  assert subsets[2] == sorted(subsets[2])
  assert subsets[1] == pipeline.texture_paths(_copy(config, data__max_textures=3))
  assert pipeline.texture_paths(_copy(config, data__max_textures=10**6)) == everything
  _, table = pipeline._train_sources(_copy(config, data__max_textures=3), cache=False)
  assert len(table) == 3
  with pytest.raises(ConfigError, match="data.max_textures"):
    pipeline.validate_data_config(_copy(config, data__max_textures=-1))
