"""MVTec AD as a TensorFlow Datasets builder, prepared once to ArrayRecord (no TensorFlow).

One builder config per category. Preparation reads the extracted MVTec AD folders from the
TFDS manual dir (config.data.root) and writes `train` and `test` ArrayRecord files into
config.data.tfds_data_dir (TFDS default `~/tensorflow_datasets` when empty):

  python -m draem_jax.data.mvtec --root ~/data/mvtec_ad --categories bottle,screw

Later runs read the prepared records with random access through `builder.as_data_source()`
(`PreparedSplit`), which needs neither TensorFlow nor the original folders. `tfds.load` and
`as_dataset` need TensorFlow and are never used.

Download: MVTec's licence (CC BY-NC-SA 4.0) asks users to download the data from its site,
and there is no stable public archive URL to automate it: the mydrive.ch links that other
projects hard-code have changed at least three times since 2021 (an FTP server before that) and
returned HTTP 404 between changes. So this builder only reads a manual download; it checks the
per-category image counts of the official release and warns when they differ (an incomplete
extraction, usually).

Features per example: image (uint8 RGB PNG; the grayscale categories grid, screw and zipper are
converted to RGB when prepared), mask (uint8 single-channel PNG, 0/255; all zeros for good
images), label (0 good, 1 defective), defect_type ("good" or the defect folder's name),
file_name (path relative to the category folder, e.g. "test/broken_large/000.png"). TFDS
shuffles records when writing, so `PreparedSplit` re-sorts them by file name (train) or by
(defect type, file name) (test).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from draem_jax.data import folder as folder_lib
from draem_jax.data import images as images_lib
from draem_jax.data.mvtec_info import CATEGORIES, EXPECTED_COUNTS
from draem_jax.errors import DataError

HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
MVTec AD must be downloaded by hand (its licence, CC BY-NC-SA 4.0, asks users to fetch it from
MVTec's site): open {HOMEPAGE}/downloads, accept the licence, download the whole data set
(mvtec_anomaly_detection.tar.xz, 4.9 GB) or single categories (<category>.tar.xz), and extract
them so that the manual dir (config.data.root, or DRAEM_MVTEC_ROOT) holds one folder per
category:

  <root>/bottle/train/good/000.png
  <root>/bottle/test/<defect>/000.png
  <root>/bottle/ground_truth/<defect>/000_mask.png

e.g. `mkdir -p ~/data/mvtec_ad && tar -xf mvtec_anomaly_detection.tar.xz -C ~/data/mvtec_ad`.
"""

_CITATION = """\
@article{bergmann2021mvtec,
  title={The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset for
         Unsupervised Anomaly Detection},
  author={Bergmann, Paul and Batzner, Kilian and Fauser, Michael and Sattlegger, David and
          Steger, Carsten},
  journal={International Journal of Computer Vision}, volume={129}, number={4},
  pages={1038--1059}, year={2021}
}"""

_LABELS = ("good", "defective")


def _png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _image_feature(path: str):
  """What to hand TFDS for an image: the file itself when it is already an 8-bit RGB PNG
  (stored verbatim, no re-encoding), else the image converted to RGB and re-encoded as PNG."""
  try:
    with Image.open(path) as image:
      verbatim = image.format == "PNG" and image.mode == "RGB"
      if verbatim:
        image.verify()  # Checks every chunk's CRC without decoding pixels.
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"Cannot read image {path}: {e}. Replace or delete the file.") from e
  return path if verbatim else _png_bytes(images_lib.decode_image(path))


def check_category_root(root: str | os.PathLike, category: str) -> Path:
  """The extracted folder of one category, or a DataError that says how to get it.

  Args:
    root: the folder that holds the extracted categories (config.data.root).
    category: one of CATEGORIES.

  Returns:
    `<root>/<category>`.
  """
  if category not in CATEGORIES:
    raise DataError(f"Unknown MVTec AD category {category!r} (data.category); expected one of "
                    f"{', '.join(CATEGORIES)}.")
  root = Path(root).expanduser()
  category_root = root / category
  if category_root.is_dir():
    return category_root
  archives = [p.name for p in (root / f"{category}.tar.xz", root / "mvtec_anomaly_detection.tar.xz")
              if p.is_file()]
  hint = (f"{root} holds {archives[0]}: extract it there (tar -xf {root / archives[0]} -C {root})."
          if archives else MANUAL_DOWNLOAD_INSTRUCTIONS)
  raise DataError(f"MVTec AD category folder {category_root} does not exist (data.root={root}, "
                  f"data.category={category}). {hint}")


# Registered as "mvtec_ad" (tfds.builder("mvtec_ad/bottle") works once this module is imported);
# not when run as a script, where the package import has registered it already.
class MvtecAd(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """MVTec AD, one config per category, prepared from a manual download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "MVTec AD (2019 release) with masks, labels and defect types."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=c, description=f"MVTec AD category {c}.") for c in CATEGORIES
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  # TFDS derives this from the package through `importlib_resources`, an undeclared TFDS
  # dependency; stating it avoids that import. Beside it TFDS would look for checksums.tsv
  # (URL checksums), which this manual-download builder does not need.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=...) rather than dataset_info_from_configs: the latter expects
    # README/CITATIONS files beside the builder.
    return tfds.core.DatasetInfo(
        builder=self,
        description="MVTec AD: industrial images for unsupervised anomaly detection.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=_LABELS),
            "defect_type": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        homepage=HOMEPAGE,
        citation=_CITATION,
        license="CC BY-NC-SA 4.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    category = self.builder_config.name
    category_root = check_category_root(dl_manager.manual_dir, category)
    train = folder_lib.scan_train(category_root)
    test = folder_lib.scan_test(category_root)
    if not test.has_masks:
      raise DataError(f"{category_root / 'ground_truth'} does not exist; MVTec AD ships a mask "
                      "for every defective test image. Re-extract the category.")
    expected = EXPECTED_COUNTS[category]
    if (len(train), len(test.samples)) != expected:
      logging.warning(
          "MVTec AD %s at %s has %d train / %d test images; the official release has %d / %d. "
          "Is the extraction complete?", category, category_root, len(train), len(test.samples),
          *expected)
    return {"train": self._generate_examples(train), "test": self._generate_examples(test.samples)}

  def _generate_examples(self, samples):
    for sample in samples:
      if sample.mask is None:
        height, width = images_lib.image_size(sample.image)
        mask = np.zeros((height, width), np.uint8)
      else:
        mask = images_lib.decode_mask(sample.mask) * np.uint8(255)
      yield sample.file_name, {
          "image": _image_feature(sample.image),
          "mask": _png_bytes(mask),
          "label": sample.label,
          "defect_type": sample.defect_type,
          "file_name": sample.file_name,
      }


def _data_dir(data_dir: str | os.PathLike | None) -> str | None:
  return os.fspath(Path(data_dir).expanduser()) if data_dir else None


def builder(category: str, data_dir: str | os.PathLike | None = None) -> MvtecAd:
  """The MvtecAd builder of one category (prepared or not)."""
  if category not in CATEGORIES:
    raise DataError(f"Unknown MVTec AD category {category!r} (data.category); expected one of "
                    f"{', '.join(CATEGORIES)}.")
  return MvtecAd(config=category, data_dir=_data_dir(data_dir), file_format="array_record")


def is_prepared(category: str, data_dir: str | os.PathLike | None = None) -> bool:
  """Whether the category's ArrayRecord files exist in `data_dir`."""
  mvtec = builder(category, data_dir)
  # TFDS logs a warning for a missing folder; only ask it about one that exists.
  return (epath.Path(mvtec.data_dir) / "dataset_info.json").exists() and mvtec.is_prepared()


def resolve_root(root: str | os.PathLike | None, data_dir: str | os.PathLike | None = None
                 ) -> Path:
  """The folder with the extracted categories: `root`, or if empty TFDS's default manual dir
  (`<data_dir>/downloads/manual`, e.g. ~/tensorflow_datasets/downloads/manual)."""
  if root:
    return Path(os.path.expandvars(os.fspath(root))).expanduser()
  return Path(builder(CATEGORIES[0], data_dir).data_dir_root) / "downloads" / "manual"


def prepare(category: str, root: str | os.PathLike | None,
            data_dir: str | os.PathLike | None = None) -> MvtecAd:
  """Prepares one category into ArrayRecord (once; a no-op when already prepared).

  Args:
    category: one of CATEGORIES.
    root: the folder holding the extracted categories (the TFDS manual dir); empty or None
      for TFDS's default manual dir.
    data_dir: where TFDS writes the prepared data (None: TFDS default).

  Returns:
    The prepared builder.

  Raises:
    DataError: the category folder is missing or malformed (names the path and the layout).
  """
  mvtec = builder(category, data_dir)
  if not is_prepared(category, data_dir):
    root = resolve_root(root, data_dir)
    check_category_root(root, category)
    logging.info("Preparing MVTec AD %s from %s into %s", category, root, mvtec.data_dir)
    mvtec.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)))
  return mvtec


class PreparedSplit:
  """Random access to a prepared split, in a stable sorted order.

  Images and masks stay encoded (TFDS `SkipDecoding`) so that the pipeline decodes and
  resizes them in one step, in worker processes. Picklable: the ArrayRecord reader is reopened
  lazily in each process.

  Attributes:
    labels, defect_types, file_names: per sample, in the sorted order.
    has_masks: always True for MVTec AD.
  """

  has_masks = True

  def __init__(self, category: str, data_dir: str | os.PathLike | None, split: str):
    self._category, self._data_dir, self._split = category, _data_dir(data_dir), split
    self._source = None
    source = self._open()
    # TFDS shuffled the records at write time; sort them back. Reading the text fields needs
    # the whole record but no image decoding (~0.5 ms per record).
    meta = [source[i] for i in range(len(source))]
    keys = [(m["file_name"].decode(),) if split == "train"
            else (m["defect_type"].decode(), m["file_name"].decode()) for m in meta]
    self._order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), np.int64)
    self.labels = np.asarray([meta[i]["label"] for i in self._order], np.int32)
    self.defect_types = [meta[i]["defect_type"].decode() for i in self._order]
    self.file_names = [meta[i]["file_name"].decode() for i in self._order]

  def _open(self):
    if self._source is None:
      decoders = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
      self._source = builder(self._category, self._data_dir).as_data_source(
          self._split, decoders=decoders)
    return self._source

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_source"] = None
    return state

  def __len__(self) -> int:
    return len(self._order)

  def name(self, index: int) -> str:
    """How errors refer to a sample: the dataset, category and file name."""
    return f"mvtec_ad/{self._category} {self.file_names[index]} (prepared in {self._data_dir})"

  def read(self, index: int) -> tuple[bytes, bytes | None]:
    """The encoded image and mask (PNG bytes) of sample `index` in the sorted order."""
    record = self._open()[int(self._order[index])]
    return record["image"], record["mask"]


def main(argv=None) -> None:
  """Command line: prepares categories into ArrayRecord ahead of training."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default=os.environ.get("DRAEM_MVTEC_ROOT", "~/data/mvtec_ad"),
                      help="folder with the extracted categories ('' = TFDS manual dir)")
  parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS default)")
  parser.add_argument("--categories", default="all", help="comma-separated, or 'all'")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  names = CATEGORIES if args.categories == "all" else args.categories.split(",")
  for category in names:
    try:
      mvtec = prepare(category, args.root, args.data_dir or None)
    except DataError as e:
      raise SystemExit(f"error: {e}") from e
    print(f"{category}: {mvtec.info.splits['train'].num_examples} train, "
          f"{mvtec.info.splits['test'].num_examples} test -> {mvtec.data_dir}")


if __name__ == "__main__":
  main()
