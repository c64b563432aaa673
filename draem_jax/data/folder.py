"""The MVTec AD folder layout, for MVTec AD itself and for your own images.

Layout (the one MVTec AD ships; only `train/good` is required for a custom data set):

  <root>/train/good/*.png                       defect-free training images
  <root>/test/good/*.png                        defect-free test images            (optional)
  <root>/test/<defect>/*.png                    defective test images              (optional)
  <root>/ground_truth/<defect>/<name>_mask.png  one mask per defective test image  (optional)

Other mask conventions (`scan_test(mask_pattern=..., mask_root=...)`, config fields
data.mask_pattern and data.mask_root): the mask of `test/<defect>/<stem>.<ext>` is
`<mask_root>/<defect>/<mask_pattern with {stem} replaced>`, e.g. `{stem}_mask.png` (MVTec AD,
MPDD; the default), `{stem}.png` (VisA and BTAD after the usual MVTec-style reorganisation),
`{stem}_label.bmp`; mask_root defaults to `<root>/ground_truth`.

Images may be PNG, JPEG, BMP or TIFF (any case of the extension); other files (licence texts,
.DS_Store, notes) and hidden files are ignored. Without a `ground_truth/` folder the test split
has no masks: `TestSplit.has_masks` is False and evaluation is image-level only. With one,
every defective test image needs its mask of the same size, and every mask its image; good
images always have empty masks (a `ground_truth/good` folder is ignored).

Scanning reads directory listings and image headers only (no pixel decoding), so it is cheap
enough to run before any compute (`pipeline.validate_data_config`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from draem_jax.data import images as images_lib
from draem_jax.errors import ConfigError, DataError

GOOD = "good"
MASK_SUFFIX = "_mask"
DEFAULT_MASK_PATTERN = "{stem}_mask.png"

LAYOUT = ("<root>/train/good/*.png (required); optional <root>/test/good/, <root>/test/<defect>/ "
          "and <root>/ground_truth/<defect>/<name>_mask.png")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One image of a split, before decoding.

  Attributes:
    image: path of the image file.
    mask: path of its ground-truth mask; None for good images and when the split has no masks.
    label: 0 = good, 1 = defective.
    defect_type: "good" or the name of the defect folder.
    file_name: stable identifier, the path relative to the data root (e.g.
      "test/broken_large/000.png"); absolute for listed files outside the root.
  """
  image: str
  mask: str | None
  label: int
  defect_type: str
  file_name: str


@dataclasses.dataclass(frozen=True)
class TestSplit:
  """The test images (sorted by defect type, then file name) and whether masks exist."""
  samples: tuple[Sample, ...]
  has_masks: bool


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
  """Image files in `folder` (optionally in all sub-folders), sorted by relative path.

  Args:
    folder: directory to list.
    recursive: also descend into sub-folders (hidden folders are skipped).

  Returns:
    Sorted paths of the files that `images.is_image_file` accepts.
  """
  folder = Path(folder)
  if not recursive:
    return sorted(p for p in folder.iterdir() if p.is_file() and images_lib.is_image_file(p))
  found = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found.extend(Path(dirpath, f) for f in filenames if images_lib.is_image_file(f))
  return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _relative_name(path: Path, root: Path) -> str:
  try:
    return path.relative_to(root).as_posix()
  except ValueError:
    return path.as_posix()


def _read_list_file(list_file: Path) -> list[Path]:
  if not list_file.is_file():
    raise DataError(f"Training image list {list_file} (data.train_list) does not exist; expected "
                    "a text file with one image path per line.")
  paths = []
  for line in list_file.read_text().splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      path = Path(line).expanduser()
      paths.append(path if path.is_absolute() else list_file.parent / path)
  return paths


def scan_train(root: str | os.PathLike,
               train_list: str | os.PathLike | Sequence[str | os.PathLike] = ""
               ) -> list[Sample]:
  """The training images: `<root>/train/good`, or an explicit list of files.

  Args:
    root: the data root (for MVTec AD, the category folder).
    train_list: "" to use `<root>/train/good`; else a text file with one image path per line
      (relative paths are relative to that file's folder), or a sequence of image paths.

  Returns:
    Samples sorted by file name (label 0, no mask).

  Raises:
    DataError: the folder is missing or holds no image, or a listed file does not exist.
  """
  root = Path(root).expanduser()
  if train_list:
    if isinstance(train_list, (str, os.PathLike)):
      paths = _read_list_file(Path(train_list).expanduser())
      what = f"the list {train_list}"
    else:
      paths = [Path(p).expanduser() for p in train_list]
      what = "data.train_list"
    for path in paths:
      if not path.is_file():
        raise DataError(f"Training image {path} (listed in {what}) does not exist.")
    if not paths:
      raise DataError(f"{what} lists no training image.")
  else:
    folder = root / "train" / GOOD
    if not folder.is_dir():
      raise DataError(f"Training folder {folder} does not exist. Expected layout: {LAYOUT}.")
    paths = list_images(folder)
    if not paths:
      raise DataError(f"Training folder {folder} holds no image "
                      f"({'/'.join(e[1:] for e in images_lib.IMAGE_EXTENSIONS)}). "
                      f"Expected layout: {LAYOUT}.")
  samples = [Sample(str(p), None, 0, GOOD, _relative_name(p, root)) for p in paths]
  return sorted(samples, key=lambda s: s.file_name)


def check_mask_pattern(pattern: str) -> None:
  """Raises ConfigError unless `pattern` is a file name with exactly one `{stem}` field."""
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
  except ValueError as e:
    raise ConfigError(f"data.mask_pattern={pattern!r} is not a valid pattern ({e}); use e.g. "
                    "'{stem}_mask.png', '{stem}.png' or '{stem}_label.bmp'.") from e
  if (fields != ["stem"] or "/" in pattern or "\\" in pattern
      or not images_lib.is_image_file(pattern.replace("{stem}", "x"))):
    raise ConfigError(f"data.mask_pattern={pattern!r} must be an image file name containing "
                    "{stem} exactly once (the test image's name without extension), e.g. "
                    "'{stem}_mask.png', '{stem}.png' or '{stem}_label.bmp'.")


def _mask_regex(pattern: str) -> re.Pattern:
  before, after = pattern.split("{stem}")
  return re.compile(re.escape(before) + "(.+)" + re.escape(after) + r"\Z")


def _mask_index(mask_dir: Path, pattern: str) -> dict[str, Path]:
  """Maps an image stem to its mask file (`pattern` with the stem) in one mask folder."""
  regex = _mask_regex(pattern)
  index = {}
  for path in list_images(mask_dir):
    match = regex.match(path.name)
    if match is None:
      raise DataError(f"Mask {path} does not match data.mask_pattern={pattern!r} (expected "
                      f"{pattern.replace('{stem}', '<image name>')}); rename it, remove it, or "
                      "set data.mask_pattern to the masks' naming.")
    index[match.group(1)] = path
  return index


def scan_test(root: str | os.PathLike, check_sizes: bool = True,
              mask_pattern: str = DEFAULT_MASK_PATTERN,
              mask_root: str | os.PathLike = "") -> TestSplit:
  """The test images and their masks, validated.

  Args:
    root: the data root (for MVTec AD, the category folder).
    check_sizes: compare each mask's size with its image's (reads two headers per image).
    mask_pattern: file name of a mask, `{stem}` standing for its image's name without
      extension (data.mask_pattern).
    mask_root: the folder holding `<defect>/<mask file>` ("" = `<root>/ground_truth`;
      data.mask_root).

  Returns:
    TestSplit with samples sorted by (defect type, file name); has_masks is True when
    the mask root exists.

  Raises:
    DataError: no `<root>/test`, a test folder without images, a defective image without its
      mask, a mask without its image, or a mask whose size differs from its image.
  """
  root = Path(root).expanduser()
  test_dir = root / "test"
  if not test_dir.is_dir():
    raise DataError(f"Test folder {test_dir} does not exist. Expected layout: {LAYOUT}.")
  defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not defect_dirs:
    raise DataError(f"Test folder {test_dir} has no sub-folder (test/good, test/<defect>). "
                    f"Expected layout: {LAYOUT}.")
  check_mask_pattern(mask_pattern)
  gt_dir = Path(mask_root).expanduser() if str(mask_root) else root / "ground_truth"
  has_masks = gt_dir.is_dir()
  samples = []
  for defect_dir in defect_dirs:
    defect = defect_dir.name
    paths = list_images(defect_dir)
    if not paths:
      raise DataError(f"Test folder {defect_dir} holds no image; remove it or add images.")
    masks = {}
    if has_masks and defect != GOOD:
      mask_dir = gt_dir / defect
      if not mask_dir.is_dir():
        raise DataError(f"Masks folder {mask_dir} for the defective images in {defect_dir} does "
                        f"not exist (the mask root {gt_dir} exists, so every defect needs masks; "
                        f"remove it, or point data.mask_root elsewhere, for image-level "
                        f"evaluation only).")
      masks = _mask_index(mask_dir, mask_pattern)
      stems = {p.stem for p in paths}
      for stem, mask in masks.items():
        if stem not in stems:
          raise DataError(f"Mask {mask} matches no image: {defect_dir / stem}.<ext> does not "
                          f"exist (data.mask_pattern={mask_pattern!r}); delete the mask or add "
                          "its image.")
    for path in paths:
      mask = None
      if has_masks and defect != GOOD:
        mask = masks.get(path.stem)
        if mask is None:
          raise DataError(f"Test image {path} has no mask "
                          f"{gt_dir / defect / mask_pattern.format(stem=path.stem)} "
                          f"(data.mask_pattern={mask_pattern!r}, mask root {gt_dir}). Expected "
                          f"layout: {LAYOUT}.")
        if check_sizes:
          image_hw, mask_hw = images_lib.image_size(path), images_lib.image_size(mask)
          if image_hw != mask_hw:
            raise DataError(f"Mask {mask} is {mask_hw[1]}x{mask_hw[0]} but its image {path} is "
                            f"{image_hw[1]}x{image_hw[0]} (width x height); they must match.")
      samples.append(Sample(str(path), None if mask is None else str(mask),
                            int(defect != GOOD), defect, _relative_name(path, root)))
  if has_masks:
    for mask_dir in sorted(p for p in gt_dir.iterdir() if p.is_dir() and p.name != GOOD):
      if not (test_dir / mask_dir.name).is_dir() and list_images(mask_dir):
        raise DataError(f"Masks folder {mask_dir} has no test folder {test_dir / mask_dir.name} "
                        "with its images.")
  samples.sort(key=lambda s: (s.defect_type, s.file_name))
  return TestSplit(tuple(samples), has_masks)


class FolderSplit:
  """Random access to a scanned split (train or test) of image files, in their sorted order.

  Attributes:
    labels: int32 (N,), 1 = defective.
    defect_types, file_names: per sample.
    has_masks: whether defective samples have ground-truth masks.
  """

  def __init__(self, samples: Sequence[Sample], has_masks: bool = False):
    self._samples = tuple(samples)
    self.has_masks = has_masks
    self.labels = np.asarray([s.label for s in self._samples], np.int32)
    self.defect_types = [s.defect_type for s in self._samples]
    self.file_names = [s.file_name for s in self._samples]

  def __len__(self) -> int:
    return len(self._samples)

  def name(self, index: int) -> str:
    """How errors refer to a sample: its path."""
    return self._samples[index].image

  def read(self, index: int) -> tuple[str, str | None]:
    """Paths of the image and of its mask (None when it has none) of sample `index`."""
    sample = self._samples[index]
    return sample.image, sample.mask
