"""Image decoding and resizing on the host (numpy + Pillow; no TensorFlow, no OpenCV).

Every image that enters draem-jax goes through `decode_image`: whatever the file holds
(RGB, RGBA, palette, grayscale, 16-bit, an EXIF-rotated JPEG) comes out as uint8 RGB, because
MVTec AD mixes RGB and grayscale categories and DRAEM works on three channels (DRAEM_SPEC 4).

`resize_bilinear` reproduces OpenCV's `cv2.resize(..., INTER_LINEAR)`, which the reference
implementation uses for images and ground-truth masks: separable linear interpolation with
half-pixel centres (`src = (dst + 0.5) * in / out - 0.5`), edge pixels replicated and NO
antialiasing when shrinking. Pillow's `Image.resize(BILINEAR)` widens its kernel when shrinking
(antialiasing) and would give softer images and masks than the published protocol.

`resize_antialiased` is that antialiased resize (Pillow's BILINEAR, triangle kernel widened by
the reduction factor), written in numpy so the JAX-free runner computes it identically: from a
900 px image the reference resize keeps one pixel in fourteen at 64 px, this one averages all.

`Preprocess` is the one geometry every image goes through (training, evaluation, validation,
predict.py, the exported model's metadata and the ONNX runner): the resize (`data.resize`:
stretch to the model size, fit the long side and pad, or fit the short side and crop the centre),
its kernel (`data.resize_antialias`), and the way back from an anomaly map to the input's own
pixels.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from draem_jax.errors import DataError

# File name endings (compared case-insensitively) that are treated as images; any other file
# (licence texts, .DS_Store, notes) in a data folder is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Images are passed around either as a path or as the encoded file bytes (TFDS records).
ImageData = Union[str, os.PathLike, bytes]

_EXIF_ORIENTATION = 0x0112


def is_image_file(path: str | os.PathLike) -> bool:
  """True for a visible file whose name ends in one of IMAGE_EXTENSIONS (any case).

  Hidden files are skipped: macOS leaves `._name.png` resource forks beside real images.
  """
  name = os.path.basename(os.fspath(path))
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(spec: str) -> list[Path]:
  """Image files named by a file, a folder (searched recursively) or a glob pattern."""
  path = Path(spec).expanduser()
  if path.is_file():
    return [path]
  if path.is_dir():
    found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
  else:
    found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                   if Path(p).is_file() and is_image_file(p))
  if not found:
    raise DataError(f"--images {spec!r} matches no image file (.png, .jpg, .jpeg, .bmp, .tif, "
                    ".tiff): give a file, a folder or a quoted glob such as 'parts/*.png'.")
  return found


def _open(data: ImageData, name: str) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    image.load()
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
    if isinstance(data, (str, os.PathLike)) and not os.path.exists(data):
      raise DataError(f"Image file {name} does not exist.") from e
    raise DataError(
        f"Cannot read image {name}: {e}. Replace or delete the file (expected a readable "
        f"{'/'.join(x[1:] for x in IMAGE_EXTENSIONS)} image).") from e
  # Photos from cameras store their rotation in EXIF; apply it so predictions line up with
  # what image viewers show. MVTec AD PNGs carry no such tag.
  if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
    image = ImageOps.exif_transpose(image)
  return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
  """Maps 16/32-bit integer and float pixels into uint8 (full-range scaling, not clipping)."""
  if array.dtype == np.uint8:
    return array
  if array.dtype == bool:
    return array.astype(np.uint8) * 255
  if np.issubdtype(array.dtype, np.floating):
    # Float images are either in [0, 1] or already on the 8-bit scale.
    scale = 255.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 1.0
    return np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
  # Integer images wider than 8 bits: 16-bit PNG/TIFF (Pillow modes I;16*, I). Values above
  # 255 mean a 16-bit range; 0..65535 maps to 0..255 by dividing by 257.
  if int(array.max(initial=0)) > 255:
    return np.clip(np.rint(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
  return np.clip(array, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
  """uint8 (H, W, 3) from any Pillow mode; grayscale is repeated, alpha is dropped."""
  if image.mode in ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX"):
    gray = image.mode in ("L", "1")
    array = np.asarray(image.convert("L" if gray else "RGB"))
  else:  # I;16, I;16B, I;16L, I, F and friends: numpy handles the bit depth.
    array = _to_uint8(np.asarray(image))
    if array.ndim == 3:
      array = array[..., :3]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  elif array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.ascontiguousarray(array)


def decode_image(data: ImageData, name: str | None = None) -> np.ndarray:
  """Decodes an image file (path or encoded bytes) to uint8 RGB.

  Args:
    data: a path, or the encoded bytes of a PNG/JPEG/BMP/TIFF file.
    name: how to refer to the image in error messages (default: the path).

  Returns:
    uint8 array (H, W, 3) at the file's resolution.

  Raises:
    DataError: the file is missing, unreadable or not an image; the message names it.
  """
  name = name or (os.fspath(data) if not isinstance(data, bytes) else "<bytes>")
  with _open(data, name) as image:
    return _to_rgb(image)


def decode_mask(data: ImageData, name: str | None = None) -> np.ndarray:
  """Decodes a ground-truth mask file to a 0/1 uint8 array.

  MVTec AD masks hold 0 and 255; masks written as 0/1 are accepted too. A mask whose maximum
  is above 1 is split at 128 (robust to slightly lossy masks); otherwise any non-zero pixel is
  defective. Colour masks count a pixel as defective if any channel does.

  Args:
    data: a path, or the encoded bytes of the mask file.
    name: how to refer to the mask in error messages (default: the path).

  Returns:
    uint8 array (H, W) of 0 and 1.
  """
  name = name or (os.fspath(data) if not isinstance(data, bytes) else "<bytes>")
  with _open(data, name) as image:
    if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
      image = image.convert("RGB")
    array = np.asarray(image)
  if array.ndim == 3:
    array = array[..., :3].max(axis=-1)
  array = _to_uint8(array) if array.dtype != bool else array.astype(np.uint8)
  threshold = 128 if int(array.max(initial=0)) > 1 else 1
  return (array >= threshold).astype(np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
  """(height, width) of an image file, read from its header only (no pixel decoding).

  Raises:
    DataError: the file cannot be opened as an image.
  """
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
    raise DataError(f"Cannot read image {path}: {e}. Replace or delete the file.") from e
  return height, width


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (i0, i1) and weight of i1 for OpenCV INTER_LINEAR along one axis."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  # Outside the outermost pixel centres OpenCV replicates the edge pixel.
  src = np.clip(src, 0.0, n_in - 1)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  height, width = size
  return int(height), int(width)


def resize_bilinear(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Bilinear resize with OpenCV INTER_LINEAR semantics (half-pixel centres, no antialiasing).

  Args:
    array: (H, W) or (H, W, C) array, uint8 or floating point.
    size: output side (square) or (height, width).

  Returns:
    (h, w) or (h, w, C) array. uint8 input gives uint8 output rounded to nearest (OpenCV's
    fixed-point arithmetic can differ from this by 1 level); float input gives float32 output
    without rounding, which is what the ground-truth masks need (DRAEM_SPEC 5).
  """
  out_h, out_w = _size_hw(size)
  in_h, in_w = array.shape[:2]
  if (in_h, in_w) == (out_h, out_w):
    return array.copy() if array.dtype == np.uint8 else array.astype(np.float32)
  y0, y1, wy = _linear_taps(in_h, out_h)
  x0, x1, wx = _linear_taps(in_w, out_w)
  extra = (None,) * (array.ndim - 2)
  # Rows first, then columns: both passes touch only the two source taps of each output.
  top = array[y0].astype(np.float32)
  rows = top + (array[y1].astype(np.float32) - top) * wy[(slice(None), None) + extra]
  left = rows[:, x0]
  out = left + (rows[:, x1] - left) * wx[(None, slice(None)) + extra]
  if array.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out.astype(np.float32)


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None
               ) -> np.ndarray:
  """Reads any user image as uint8 RGB, optionally resized the way training images are.

  Accepts any resolution and RGB, RGBA, palette, grayscale or 16-bit files (used by predict.py
  on new images).

  Args:
    path: the image file.
    size: None keeps the original resolution; an int (square side) or (height, width) resizes
      bilinearly exactly as the training and test images are.

  Returns:
    uint8 array (H, W, 3), or (size, size, 3).

  Raises:
    DataError: the file is missing or cannot be decoded; the message names it.
  """
  path = Path(path).expanduser()
  if path.is_dir():
    raise DataError(f"{path} is a folder; load_image expects an image file.")
  image = decode_image(path)
  return image if size is None else resize_bilinear(image, size)


# ------------------------------------------------------------------------------------------
# Antialiased resize and the preprocessing geometry.


def _triangle_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights (n_out, K) of Pillow's BILINEAR resample along one axis.

  Pillow (`ImagingResample`, `precompute_coeffs`): the triangle kernel of support 1 is widened
  by the reduction factor `scale = in / out` when shrinking (never narrowed when enlarging),
  centred on `(i + 0.5) * scale`, cut at the image borders and renormalised to sum 1. Padding
  taps carry weight 0 (and index 0).
  """
  scale = n_in / n_out
  filter_scale = max(scale, 1.0)
  support = filter_scale  # The triangle's support (1) times the widening.
  centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
  # Pillow truncates towards zero (a C cast); both ends are then clipped to the image.
  lo = np.clip(np.trunc(centre - support + 0.5).astype(np.int64), 0, n_in)
  hi = np.clip(np.trunc(centre + support + 0.5).astype(np.int64), 0, n_in)
  k = int(max(1, (hi - lo).max()))
  index = lo[:, None] + np.arange(k)[None, :]
  inside = index < hi[:, None]
  weight = np.maximum(0.0, 1.0 - np.abs((index - centre[:, None] + 0.5) / filter_scale))
  weight = np.where(inside, weight, 0.0)
  weight /= np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
  return np.where(inside, index, 0), weight.astype(np.float32)


def _resample_axis(array: np.ndarray, n_out: int, axis: int) -> np.ndarray:
  """float32 `array` resampled along `axis` (0 or 1) with `_triangle_taps`."""
  index, weight = _triangle_taps(array.shape[axis], n_out)
  shape = [1] * array.ndim
  shape[axis] = n_out
  out = np.zeros(array.shape[:axis] + (n_out,) + array.shape[axis + 1:], np.float32)
  for t in range(index.shape[1]):  # K taps: a gather and a multiply-add each.
    out += np.take(array, index[:, t], axis=axis) * weight[:, t].reshape(shape)
  return out


def resize_antialiased(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Antialiased bilinear resize: Pillow's `Image.resize(size, BILINEAR)` in numpy.

  Every input pixel contributes when shrinking (a triangle kernel as wide as the reduction),
  so small defects are averaged into the smaller image instead of skipped. Enlarging is plain
  bilinear interpolation with half-pixel centres.

  Args:
    array: (H, W) or (H, W, C), uint8 or floating point.
    size: output side (square) or (height, width).

  Returns:
    (h, w) or (h, w, C). uint8 input gives uint8 rounded to nearest (Pillow rounds after each
    of its two passes, so the two can differ by 1 level); float input gives float32.
  """
  out_h, out_w = _size_hw(size)
  in_h, in_w = array.shape[:2]
  if (in_h, in_w) == (out_h, out_w):
    return array.copy() if array.dtype == np.uint8 else array.astype(np.float32)
  # Columns first, then rows, as Pillow.
  out = array.astype(np.float32)
  if out_w != in_w:
    out = _resample_axis(out, out_w, axis=1)
  if out_h != in_h:
    out = _resample_axis(out, out_h, axis=0)
  if array.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out


RESIZE_MODES = ("stretch", "fit_long_side", "fit_short_side")


def size_hw(value: Any, field: str = "data.image_size") -> tuple[int, int]:
  """(height, width) from a square side or a (height, width) pair (a list after JSON).

  Raises:
    ValueError: naming `field`, when `value` is neither.
  """
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value), int(value)
  if (isinstance(value, (tuple, list)) and len(value) == 2
      and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
    return int(value[0]), int(value[1])
  raise ValueError(f"{field}={value!r} must be a side (e.g. 256) or (height, width), e.g. "
                   "(256, 512).")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where an input image lands in the model's (height, width) frame.

  The input is resized to (height, width) = `resized`, then put at (top, left) of the frame;
  a negative offset means that much is cut off (fit_short_side's centre crop), a positive one
  is padding (fit_long_side).
  """

  resized: tuple[int, int]
  top: int
  left: int


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """The geometry from an input image of any size to the model's input, and back.

  Attributes:
    size: (height, width) of the model's input (data.image_size).
    mode: one of RESIZE_MODES (data.resize). stretch: resize to `size`, ignoring the aspect
      ratio (the reference). fit_long_side: keep the aspect ratio, the whole image inside
      `size`, the rest padded with black. fit_short_side: keep the aspect ratio, cover `size`,
      the overhang cut off equally on both sides (centre crop).
    antialias: resize with `resize_antialiased` (data.resize_antialias) instead of the
      reference's `resize_bilinear`.
  """

  size: tuple[int, int]
  mode: str = "stretch"
  antialias: bool = False

  def __post_init__(self):
    object.__setattr__(self, "size", size_hw(self.size))
    if self.mode not in RESIZE_MODES:
      raise ValueError(f"data.resize={self.mode!r} must be one of {RESIZE_MODES}.")
    object.__setattr__(self, "antialias", bool(self.antialias))

  @classmethod
  def from_config(cls, data_config) -> "Preprocess":
    """From the data group of an experiment config (fields missing in old runs: defaults)."""
    return cls(size=data_config.image_size, mode=data_config.get("resize", "stretch"),
               antialias=bool(data_config.get("resize_antialias", False)))

  def to_metadata(self) -> dict[str, Any]:
    """JSON-ready description (model.json of an exported model)."""
    return {"size": list(self.size), "mode": self.mode, "antialias": self.antialias}

  @classmethod
  def from_metadata(cls, meta: dict[str, Any]) -> "Preprocess":
    return cls(size=tuple(meta["size"]), mode=meta.get("mode", "stretch"),
               antialias=bool(meta.get("antialias", False)))

  def placement(self, original_hw: tuple[int, int]) -> Placement:
    """Where an image of `original_hw` = (height, width) goes in the (H, W) frame."""
    out_h, out_w = self.size
    in_h, in_w = int(original_hw[0]), int(original_hw[1])
    if self.mode == "stretch":
      return Placement((out_h, out_w), 0, 0)
    pick = min if self.mode == "fit_long_side" else max
    scale = pick(out_h / in_h, out_w / in_w)
    # The side that decided the scale matches the frame exactly; the other is rounded.
    h = out_h if scale == out_h / in_h else max(1, round(in_h * scale))
    w = out_w if scale == out_w / in_w else max(1, round(in_w * scale))
    return Placement((h, w), (out_h - h) // 2, (out_w - w) // 2)

  def _resize(self, array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return (resize_antialiased if self.antialias else resize_bilinear)(array, hw)

  def _place(self, resized: np.ndarray, where: Placement) -> np.ndarray:
    out_h, out_w = self.size
    if where.top == 0 and where.left == 0 and resized.shape[:2] == (out_h, out_w):
      return resized
    canvas = np.zeros((out_h, out_w) + resized.shape[2:], resized.dtype)
    h, w = where.resized
    # Source and destination windows (a negative offset crops the source).
    sy, sx = max(0, -where.top), max(0, -where.left)
    dy, dx = max(0, where.top), max(0, where.left)
    ch, cw = min(h - sy, out_h - dy), min(w - sx, out_w - dx)
    canvas[dy:dy + ch, dx:dx + cw] = resized[sy:sy + ch, sx:sx + cw]
    return canvas

  def image(self, array: np.ndarray) -> np.ndarray:
    """(h, w, C) uint8 image of any size -> (H, W, C) uint8 model input (padding is black)."""
    where = self.placement(array.shape[:2])
    return self._place(self._resize(array, where.resized), where)

  def mask(self, array: np.ndarray) -> np.ndarray:
    """(h, w) 0/1 ground-truth mask -> float32 (H, W) in [0, 1], resized with the image's own
    kernel and placement (the evaluator thresholds it: eval.protocol)."""
    where = self.placement(array.shape[:2])
    return self._place(self._resize(np.asarray(array, np.float32), where.resized), where)

  def map_back(self, anomaly_map: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) map on the model's frame -> float32 (h, w) on the input image's own pixels.

    The padding of fit_long_side is dropped; the parts fit_short_side cut off were never
    scored and read 0. The resize back is bilinear (enlarging: no antialiasing needed).
    """
    where = self.placement(original_hw)
    h, w = where.resized
    region = np.zeros((h, w), np.float32)
    out_h, out_w = self.size
    sy, sx = max(0, -where.top), max(0, -where.left)
    dy, dx = max(0, where.top), max(0, where.left)
    ch, cw = min(h - sy, out_h - dy), min(w - sx, out_w - dx)
    region[sy:sy + ch, sx:sx + cw] = anomaly_map[dy:dy + ch, dx:dx + cw]
    return resize_bilinear(region, (int(original_hw[0]), int(original_hw[1])))


# ------------------------------------------------------------------------------------------
# Images handed over by users (files, bytes, arrays) and the model's input.


def as_rgb(image: ImageData | np.ndarray, name: str | None = None) -> np.ndarray:
  """Any image a user hands over, as uint8 RGB (H, W, 3) at its own resolution.

  Args:
    image: a path or encoded file bytes (`decode_image`), or an array: (H, W) or (H, W, 1)
      grayscale, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, 16-bit, bool, or float in [0, 1]
      (or on the 8-bit scale), mapped to uint8 as decoded files are (`_to_uint8`).
    name: how to refer to the image in error messages.

  Raises:
    DataError: an unreadable file or an array of another shape; the message names it.
  """
  if not isinstance(image, np.ndarray):
    return decode_image(image, name)
  name = name or "image array"
  if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
    array = image[..., :3]
  elif image.ndim == 2:
    array = image
  else:
    raise DataError(f"{name} has shape {image.shape}: expected (H, W) grayscale, (H, W, 1), "
                    "(H, W, 3) RGB or (H, W, 4) RGBA.")
  if min(array.shape[:2]) < 1:
    raise DataError(f"{name} has shape {image.shape}: it holds no pixel.")
  array = _to_uint8(array)
  if array.ndim == 2 or array.shape[-1] == 1:
    array = np.repeat(array.reshape(array.shape[:2] + (1,)), 3, axis=-1)
  return np.ascontiguousarray(array)


def model_input(image: np.ndarray, preprocess: Preprocess) -> np.ndarray:
  """The one preprocessing step between a decoded image and every model call.

  predict.py, the ONNX runner, `draem_jax.Detector` and the server all call this, so a file
  scored by any of them gives the same numbers. The model maps uint8 to [0, 1] itself (the
  JAX predict function) or is fed `x / 255` in float32 (ONNX, model.json's value_range).
  `preprocess.map_back` brings the model's map back onto the image.

  Args:
    image: uint8 RGB (H, W, 3) at its own resolution (`as_rgb`).
    preprocess: the run's geometry (`Preprocess.from_config(config.data)`); the default,
      Preprocess(data.image_size), is `resize_bilinear` to that size, as in training.

  Returns:
    uint8 (H', W', 3) at the model's input size.
  """
  return preprocess.image(image)
