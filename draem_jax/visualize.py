"""Pictures of anomaly maps: jet heatmaps, overlays, per-image panels, grids, atomic PNGs.

Everything is numpy + PIL on host arrays (no matplotlib). Anomaly maps are probabilities in
[0, 1] and are coloured as they are, without per-image normalisation, so that colours mean
the same score in every picture of a run.
"""

from collections.abc import Sequence
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from draem_jax import fileio

# matplotlib's "jet" segment data: (position, value) control points per channel, linear in
# between; sampled at 256 levels like matplotlib's colormap lookup table.
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
SEPARATOR_VALUE = 255  # Colour (grey level) of the separators between tiles.


def _jet_lut() -> np.ndarray:
  levels = np.linspace(0.0, 1.0, 256)
  channels = []
  for name in ("red", "green", "blue"):
    xs, ys = zip(*_JET_SEGMENTS[name])
    channels.append(np.interp(levels, xs, ys))
  return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


JET_LUT = _jet_lut()  # (256, 3) uint8.


def to_uint8(image: np.ndarray) -> np.ndarray:
  """An RGB uint8 (H, W, 3) image from uint8 or float-in-[0, 1] input, gray or RGB.

  Args:
    image: (H, W), (H, W, 1) or (H, W, 3); uint8 as is, floats scaled by 255 and rounded.

  Returns:
    (H, W, 3) uint8.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def heatmap(anomaly_map: np.ndarray) -> np.ndarray:
  """Jet colouring of a map in [0, 1] (values outside are clipped, NaN reads 0).

  Args:
    anomaly_map: (H, W) float.

  Returns:
    (H, W, 3) uint8: 0 -> dark blue (0, 0, 128), 0.5 -> green-ish, 1 -> dark red (128, 0, 0).
  """
  values = np.nan_to_num(np.asarray(anomaly_map, np.float64), nan=0.0)
  # matplotlib's binning: 256 equal bins of [0, 1], the value 1.0 in the last one.
  index = np.clip(np.floor(values * 256.0), 0, 255).astype(np.intp)
  return JET_LUT[index]


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Blends the jet heatmap of `anomaly_map` over `image`: (1 - alpha) image + alpha heat.

  Args:
    image: (H, W, 3) uint8 (gray or float [0, 1] also accepted, see `to_uint8`).
    anomaly_map: (H, W) in [0, 1].
    alpha: heatmap opacity in [0, 1]; 0 returns the image unchanged.

  Returns:
    (H, W, 3) uint8.
  """
  image = to_uint8(image)
  if image.shape[:2] != np.shape(anomaly_map):
    raise ValueError(f"image {image.shape[:2]} and anomaly map {np.shape(anomaly_map)} differ "
                     "in size.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
  blend = (1.0 - alpha) * image + alpha * heatmap(anomaly_map).astype(np.float64)
  return np.round(blend).astype(np.uint8)


def _mask_tile(mask: np.ndarray) -> np.ndarray:
  return np.repeat((np.asarray(mask, bool) * np.uint8(255))[..., None], 3, axis=-1)


def _hstack(tiles: Sequence[np.ndarray], separator: int) -> np.ndarray:
  h = tiles[0].shape[0]
  bar = np.full((h, separator, 3), SEPARATOR_VALUE, np.uint8)
  parts = []
  for i, tile in enumerate(tiles):
    if i:
      parts.append(bar)
    parts.append(tile)
  return np.concatenate(parts, axis=1)


def _title_strip(text: str, width: int) -> np.ndarray:
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
  strip = Image.new("RGB", (width, bottom - top + 4), (0, 0, 0))
  ImageDraw.Draw(strip).text((2 - left, 2 - top), text, fill=(255, 255, 255), font=font)
  return np.asarray(strip, np.uint8)


def panel(image: np.ndarray, anomaly_map: np.ndarray, threshold: float,
          gt_mask: np.ndarray | None = None, title: str | None = None, alpha: float = 0.5,
          separator: int = 2) -> np.ndarray:
  """One test image side by side: image | heatmap overlay | predicted mask | ground truth.

  Args:
    image: (H, W, 3) uint8 (or gray / float [0, 1]).
    anomaly_map: (H, W) in [0, 1].
    threshold: pixels with `anomaly_map >= threshold` form the predicted mask (white).
    gt_mask: (H, W) bool ground truth, or None to leave the last tile out.
    title: optional text (e.g. score and label) written on a black strip above the tiles.
    alpha: heatmap opacity of the overlay.
    separator: width in pixels of the white bars between tiles.

  Returns:
    (H + title strip, 4 W + 3 separator (3 W + 2 separator without gt), 3) uint8.
  """
  image = to_uint8(image)
  tiles = [image, overlay(image, anomaly_map, alpha),
           _mask_tile(np.asarray(anomaly_map) >= threshold)]
  if gt_mask is not None:
    if np.shape(gt_mask) != image.shape[:2]:
      raise ValueError(f"gt_mask {np.shape(gt_mask)} and image {image.shape[:2]} differ in "
                       "size.")
    tiles.append(_mask_tile(gt_mask))
  out = _hstack(tiles, separator)
  if title:
    out = np.concatenate([_title_strip(title, out.shape[1]), out], axis=0)
  return out


def grid(panels: Sequence[np.ndarray], columns: int = 1, separator: int = 2) -> np.ndarray:
  """Arranges uint8 (h_i, w_i, 3) pictures row-major, each cell padded to the largest size.

  Args:
    panels: non-empty sequence of (h, w, 3) uint8 arrays.
    columns: pictures per row.
    separator: width of the white bars between cells.

  Returns:
    (rows * H + (rows - 1) * separator, columns * W + (columns - 1) * separator, 3) uint8,
    H, W the largest panel height and width; unused cells are black.
  """
  if not panels or columns < 1:
    raise ValueError("grid needs at least one panel and columns >= 1.")
  cell_h = max(p.shape[0] for p in panels)
  cell_w = max(p.shape[1] for p in panels)
  rows = -(-len(panels) // columns)
  out = np.full((rows * cell_h + (rows - 1) * separator,
                 columns * cell_w + (columns - 1) * separator, 3), SEPARATOR_VALUE, np.uint8)
  for k in range(rows * columns):
    r, c = divmod(k, columns)
    y, x = r * (cell_h + separator), c * (cell_w + separator)
    out[y:y + cell_h, x:x + cell_w] = 0
    if k < len(panels):
      p = to_uint8(panels[k])
      out[y:y + p.shape[0], x:x + p.shape[1]] = p
  return out


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
  """Writes a uint8 picture as PNG atomically (`fileio.atomic_write`).

  A reader never sees a half-written file, and an interrupted run leaves no partial PNG.

  Args:
    path: destination; parent folders are created.
    array: (H, W), (H, W, 1) or (H, W, 3) uint8 (floats in [0, 1] are converted).

  Returns:
    The destination path.
  """
  picture = Image.fromarray(to_uint8(array))
  return fileio.atomic_write(path, lambda f: picture.save(f, format="PNG"))
