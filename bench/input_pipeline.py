"""Input pipeline throughput: training images/s delivered by make_train_dataset.

Compares, at --image_size (default 256) and --batch_size (default 8):
  * "arrayrecord": MVTec AD prepared by TFDS to ArrayRecord, PNGs decoded every step;
  * "png":         the original PNG files (folder source), decoded every step;
  * "cache":       both decoded once into memory (data.cache_decoded, the default);
each with 0, 1, 2 grain worker processes. Time to the first batch (worker start-up, and for
the cache the up-front decoding) is reported apart from the steady-state rate, timed over
--num_batches batches once the prefetch buffers have been drained. Each delivered image comes
with its texture: a row's images/s counts one image plus one texture decoded and resized.

  python bench/input_pipeline.py \
      --mvtec_root ../shared/data/mvtec_ad --texture_root ../shared/data/dtd/images

Keep runs short on shared machines (defaults take about two minutes on 2 cores).
"""

import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import app
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from draem_jax.data import mvtec  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_MVTEC_ROOT = flags.DEFINE_string("mvtec_root", str(_SHARED / "mvtec_ad"),
                                  "Folder with the extracted MVTec AD categories.")
_TEXTURE_ROOT = flags.DEFINE_string("texture_root", str(_SHARED / "dtd" / "images"),
                                    "Folder of texture images.")
_CATEGORY = flags.DEFINE_string("category", "bottle", "MVTec AD category.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", "", "Prepared data ('' = a temp dir).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Side of the delivered images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 12, "Batches timed after the first.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to try.")
_MODES = flags.DEFINE_list("modes", ["arrayrecord", "png", "cache"], "Sources to compare.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the results.")


def _config(mode: str, data_dir: str):
  spec_path = Path(__file__).resolve().parents[1] / "configs" / "mvtec.py"
  spec = importlib.util.spec_from_file_location("bench_cfg_mvtec", spec_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(_CATEGORY.value)
  config.data.texture_root = _TEXTURE_ROOT.value
  config.data.image_size = _IMAGE_SIZE.value
  config.data.tfds_data_dir = data_dir
  config.data.prefetch_buffer_size = 2
  config.train.batch_size = _BATCH_SIZE.value
  if mode == "png":
    config.data.source = "folder"
    config.data.root = str(Path(_MVTEC_ROOT.value) / _CATEGORY.value)
  else:
    config.data.root = _MVTEC_ROOT.value
  return config


def _measure(mode: str, workers: int, data_dir: str) -> dict:
  config = _config(mode, data_dir)
  start = time.perf_counter()
  it = iter(pipeline.make_train_dataset(config, cache=mode == "cache", num_workers=workers))
  try:
    next(it)
    first = time.perf_counter() - start
    # Drain what the workers prefetched while the first batch was awaited (their buffers and
    # the reader's), so that the timed batches are produced at the steady-state rate.
    for _ in range((workers + 1) * (config.data.prefetch_buffer_size + 1)):
      next(it)
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
      next(it)
    steady = time.perf_counter() - start
  finally:
    it.close()
  rate = _NUM_BATCHES.value * _BATCH_SIZE.value / steady
  return {"mode": mode, "workers": workers, "first_batch_s": round(first, 2),
          "images_per_s": round(rate, 1)}


def main(argv):
  del argv
  data_dir = _TFDS_DATA_DIR.value or tempfile.mkdtemp(prefix="draem_bench_tfds_")
  start = time.perf_counter()
  mvtec.prepare(_CATEGORY.value, _MVTEC_ROOT.value, data_dir)
  print(f"prepare ArrayRecord ({_CATEGORY.value}): {time.perf_counter() - start:.1f} s "
        f"(0 if already prepared in {data_dir})")
  print(f"{os.cpu_count()} CPU cores; image_size {_IMAGE_SIZE.value}, batch {_BATCH_SIZE.value}")
  results = []
  for mode in _MODES.value:
    # The first cache row starts cold: its first batch includes decoding everything once.
    pipeline.clear_cache()
    for workers in map(int, _WORKERS.value):
      row = _measure(mode, workers, data_dir)
      results.append(row)
      print(f"{mode:12s} workers={workers}  first batch {row['first_batch_s']:6.2f} s  "
            f"{row['images_per_s']:8.1f} images/s", flush=True)
  if _OUT.value:
    Path(_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
