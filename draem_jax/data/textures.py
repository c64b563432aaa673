"""Anomaly-source textures: any folder of images, searched recursively.

DRAEM pastes patches of unrelated textures (DTD, `dtd/images/<class>/*.jpg`) into defect-free
images (DRAEM_SPEC 4). The built-in TFDS `dtd` builder cannot be used here: it downloads a
625 MB archive and reads it with `tf.io.gfile`, which needs TensorFlow. A folder works for DTD
and for any other texture collection; grayscale textures are converted to RGB when decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from draem_jax.data import folder as folder_lib
from draem_jax.data import images as images_lib
from draem_jax.errors import DataError


def list_textures(texture_root: str | os.PathLike) -> list[str]:
  """All texture images under `texture_root` (recursively), sorted by relative path.

  Args:
    texture_root: a folder such as DTD's `images/` (config.data.texture_root).

  Returns:
    Absolute paths of the image files (.jpg/.jpeg/.png/.bmp/.tif/.tiff, any case).

  Raises:
    DataError: the folder does not exist or holds no image.
  """
  root = Path(texture_root).expanduser()
  if not root.is_dir():
    raise DataError(
        f"Texture folder {root} (data.texture_root) does not exist. Point it at a folder of "
        "texture images, e.g. DTD's dtd/images (https://www.robots.ox.ac.uk/~vgg/data/dtd/), or "
        "set DRAEM_TEXTURE_ROOT.")
  paths = folder_lib.list_images(root, recursive=True)
  if not paths:
    raise DataError(
        f"Texture folder {root} (data.texture_root) holds no image "
        f"({'/'.join(e[1:] for e in images_lib.IMAGE_EXTENSIONS)}, searched recursively).")
  return [str(p.resolve()) for p in paths]


# Seed of the texture subset of `select_textures`: fixed, so that every run (and seed) with
# the same data.max_textures sees the same textures, and smaller subsets nest in larger ones.
SUBSET_SEED = 0


def select_textures(paths: list[str], max_textures: int) -> list[str]:
  """A fixed subset of `max_textures` of the sorted `paths` (all of them when 0 or more).

  The subset is the first `max_textures` of one seeded permutation of the sorted paths (seed
  SUBSET_SEED), returned sorted: the subset of N is contained in that of any M > N, which is
  what a texture-count curve (the paper's Figure 9) compares.

  Args:
    paths: sorted texture paths (`list_textures`).
    max_textures: data.max_textures, >= 0.

  Returns:
    The chosen paths, sorted.
  """
  if max_textures <= 0 or max_textures >= len(paths):
    return list(paths)
  order = np.random.default_rng(SUBSET_SEED).permutation(len(paths))
  return sorted(paths[i] for i in order[:max_textures])
