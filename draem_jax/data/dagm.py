"""The DAGM 2007 competition data (the paper's Table 4): layout and labels.

Layout of the public data (`data.root`; `data.category` is one of the class folders):

  <root>/ClassN/Train/*.PNG                   training images, defect-free and defective
  <root>/ClassN/Test/*.PNG                    test images, defect-free and defective
  <root>/ClassN/{Train,Test}/Label/Labels.txt one line per image: index, defect flag (0/1),
                                              image file, an unused column, label file
  <root>/ClassN/{Train,Test}/Label/<name>_label.PNG   an ellipse around each defect

The protocol of the paper: train on the defect-free images of Train only, test on all of Test,
image-level classification only (the ellipses are too coarse to score localisation, so the
test split carries no masks). Without Labels.txt an image is defective when its
Label/<name>_label.PNG exists. Images are 8-bit grayscale (converted to RGB when decoded).
"""

from __future__ import annotations

from pathlib import Path

from draem_jax.data import folder as folder_lib
from draem_jax.errors import DataError

SPLITS = {"train": "Train", "test": "Test"}
LABEL_DIR = "Label"
LABELS_FILE = "Labels.txt"
DEFECT = "defect"
LAYOUT = ("<root>/ClassN/{Train,Test}/*.PNG with <root>/ClassN/{Train,Test}/Label/Labels.txt "
          "(or Label/<name>_label.PNG for each defective image)")


def _labels_file(split_dir: Path) -> Path | None:
  for path in (split_dir / LABEL_DIR / LABELS_FILE, split_dir / LABELS_FILE):
    if path.is_file():
      return path
  return None


def read_labels(labels_file: Path) -> dict[str, int]:
  """{image file name: defect flag} from a DAGM Labels.txt.

  Lines with fewer than three fields (the count on the first line, blank lines) are skipped;
  the flag is the second field, the image's file name the third.

  Raises:
    DataError: a flag that is not 0 or 1, naming the file and line.
  """
  labels = {}
  for number, line in enumerate(labels_file.read_text().splitlines(), 1):
    fields = line.split()
    if len(fields) < 3:
      continue
    if fields[1] not in ("0", "1"):
      raise DataError(f"{labels_file} line {number}: the defect flag (second field) is "
                      f"{fields[1]!r}, expected 0 or 1 (DAGM 2007 layout: {LAYOUT}).")
    labels[fields[2]] = int(fields[1])
  return labels


def scan(root: str | Path, category: str, split: str) -> list[folder_lib.Sample]:
  """The samples of one class's split, sorted by file name.

  Args:
    root: the DAGM folder that holds the class folders (data.root).
    category: the class folder, e.g. "Class1" (data.category).
    split: "train" (defect-free Train images only) or "test" (all Test images).

  Returns:
    Samples without masks; label 1 and defect type "defect" for defective images, else 0 and
    "good"; file names relative to `root` (e.g. "Class1/Test/0001.PNG").

  Raises:
    DataError: a missing folder, a folder without images, an image missing from Labels.txt,
      a listed image that does not exist, or a split without any defect-free image to train on.
  """
  root = Path(root).expanduser()
  split_dir = root / category / SPLITS[split]
  if not split_dir.is_dir():
    raise DataError(f"DAGM folder {split_dir} does not exist (data.root={str(root)!r}, "
                    f"data.category={category!r}). Expected layout: {LAYOUT}.")
  paths = folder_lib.list_images(split_dir)
  if not paths:
    raise DataError(f"DAGM folder {split_dir} holds no image. Expected layout: {LAYOUT}.")
  labels_file = _labels_file(split_dir)
  if labels_file is not None:
    listed = read_labels(labels_file)
    names = {p.name for p in paths}
    missing = sorted(set(listed) - names)
    if missing:
      raise DataError(f"{labels_file} lists {missing[0]}, which is not in {split_dir} "
                      f"({len(missing)} listed images are missing).")
    for path in paths:
      if path.name not in listed:
        raise DataError(f"Image {path} is not listed in {labels_file}: add its line or remove "
                        "the image.")
    flags = {p: listed[p.name] for p in paths}
  else:
    flags = {p: int((split_dir / LABEL_DIR / f"{p.stem}_label{p.suffix}").is_file()
                    or (split_dir / LABEL_DIR / f"{p.stem}_label.PNG").is_file())
             for p in paths}
  samples = [folder_lib.Sample(str(p), None, flag, DEFECT if flag else folder_lib.GOOD,
                               p.relative_to(root).as_posix())
             for p, flag in flags.items() if split == "test" or flag == 0]
  if split == "train" and not samples:
    raise DataError(f"DAGM folder {split_dir} holds no defect-free image to train on.")
  return sorted(samples, key=lambda s: s.file_name)
