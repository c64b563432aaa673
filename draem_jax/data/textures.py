"""Anomaly-source textures: any folder of images, searched recursively.

DRAEM pastes patches of unrelated textures (DTD, `dtd/images/<class>/*.jpg`) into defect-free
images (DRAEM_SPEC 4). The built-in TFDS `dtd` builder cannot be used here: it downloads a
625 MB archive and reads it with `tf.io.gfile`, which needs TensorFlow. A folder works for DTD
and for any other texture collection; grayscale textures are converted to RGB when decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

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
