"""Pictures of anomaly maps: jet heatmaps, tinted overlays, per-image panels, grids, PNGs.

Everything is numpy + PIL on host arrays (no JAX, no matplotlib), so that a deployment runner
without JAX can draw the same panels. Anomaly maps are probabilities in [0, 1] and are
coloured as they are, without per-image normalisation, so that colours mean the same score in
every picture of a run. Overlays tint the image only where the map is high: the heatmap's
opacity grows from 0 at a start value to its maximum at a full value (in panels: from 3/4 of
the mask threshold to the threshold), so defect-free surface stays visible as it is instead of
under a blue veil, and everything the predicted mask holds is coloured by its score.
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
# Default heatmap opacity ramp of `overlay`: fully transparent up to TINT_START (DRAEM's maps
# of defect-free surface sit near 0), fully opaque (times alpha) from TINT_FULL on.
TINT_START = 0.1
TINT_FULL = 0.5
# Panels anchor the ramp at the mask threshold t instead: [TINT_START_FRACTION t, t]. An
# under-trained model's background can sit at 0.2 with t = 0.3; a fixed ramp veils it all.
TINT_START_FRACTION = 0.75
LEGEND_BACKGROUND = 128  # Grey the legend's colour bar is tinted over.


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


def tint_opacity(anomaly_map: np.ndarray, alpha: float = 0.6, start: float = TINT_START,
                 full: float = TINT_FULL) -> np.ndarray:
  """Per-pixel heatmap opacity of `overlay`: 0 up to `start`, `alpha` from `full` on.

  Args:
    anomaly_map: (H, W) float in [0, 1] (NaN reads 0).
    alpha: the largest opacity, in [0, 1].
    start, full: the ramp, 0 <= start < full.

  Returns:
    (H, W) float64 in [0, alpha], linear in the map between `start` and `full`; 0 where the
    map is <= start, in particular where it is 0.
  """
  if not 0.0 <= start < full:
    raise ValueError(f"the tint ramp needs 0 <= start < full, got start={start}, full={full}.")
  values = np.nan_to_num(np.asarray(anomaly_map, np.float64), nan=0.0)
  return alpha * np.clip((values - start) / (full - start), 0.0, 1.0)


def tint_range(threshold: float) -> tuple[float, float]:
  """The ramp panels use for mask threshold t: (TINT_START_FRACTION t, t), else the default."""
  if np.isfinite(threshold) and 0.0 < threshold <= 1.0:
    return TINT_START_FRACTION * float(threshold), float(threshold)
  return TINT_START, TINT_FULL


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.6,
            start: float = TINT_START, full: float = TINT_FULL) -> np.ndarray:
  """Tints `image` with the jet heatmap of `anomaly_map` where the map is high.

  Per pixel: (1 - a) image + a heat, with a = `tint_opacity(anomaly_map, alpha, start, full)`;
  pixels whose map is <= `start` (in particular 0) keep their exact colour.

  Args:
    image: (H, W, 3) uint8 (gray or float [0, 1] also accepted, see `to_uint8`).
    anomaly_map: (H, W) in [0, 1].
    alpha: the heatmap's opacity where the map is >= `full`, in [0, 1]; 0 returns the image
      unchanged.
    start, full: the opacity ramp (see `tint_opacity`).

  Returns:
    (H, W, 3) uint8.
  """
  image = to_uint8(image)
  if image.shape[:2] != np.shape(anomaly_map):
    raise ValueError(f"image {image.shape[:2]} and anomaly map {np.shape(anomaly_map)} differ "
                     "in size.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
  a = tint_opacity(anomaly_map, alpha, start, full)[..., None]
  blend = (1.0 - a) * image + a * heatmap(anomaly_map).astype(np.float64)
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


def font_size(tile_height: int) -> int:
  """Text height in pixels for tiles `tile_height` high: ~1/12 of it, 11 to 72 pixels.

  The panels are looked at scaled to a screen or a report column; text proportional to the
  tile stays legible at every image resolution (21 px on 256 px tiles, 72 px on 900 px ones).
  """
  return int(np.clip(round(tile_height / 12), 11, 72))


def _font(size: int) -> ImageFont.ImageFont:
  # Pillow's bundled scalable font (needs FreeType; without it, a fixed bitmap font).
  return ImageFont.load_default(size=size)


def _text_strip(texts: Sequence[tuple[int, str]], width: int, size: int) -> np.ndarray:
  """A black strip `width` wide with white `(x, text)` items on one line of `size` px text."""
  font = _font(size)
  pad = max(2, size // 4)
  ascent, descent = font.getmetrics()
  strip = Image.new("RGB", (width, ascent + descent + 2 * pad), (0, 0, 0))
  draw = ImageDraw.Draw(strip)
  for x, text in texts:
    draw.text((x + pad, pad), text, fill=(255, 255, 255), font=font)
  return np.asarray(strip, np.uint8)


def _legend_strip(width: int, bar_width: int, threshold: float, size: int,
                  alpha: float) -> np.ndarray:
  """The map's scale: the overlay's tint of 0..1 over grey, ticks, and the mask threshold."""
  font = _font(size)
  pad = max(2, size // 4)
  ascent, descent = font.getmetrics()
  text_h = ascent + descent
  label = "anomaly map"
  label_w = int(np.ceil(font.getlength(label)))
  x0 = 2 * pad + label_w + pad
  marked = np.isfinite(threshold) and 0.0 <= threshold <= 1.0
  note = f"mask: map >= {threshold:.2f}" if marked else ""
  # Room on the right for the half-width of the "1" tick label and for the threshold note.
  right = 2 * pad + int(np.ceil(font.getlength(note))) + size
  bar_w = max(16, min(bar_width, width - x0 - right))
  bar_h = max(6, size)
  strip = Image.new("RGB", (width, pad + bar_h + pad + text_h + pad), (0, 0, 0))
  values = np.linspace(0.0, 1.0, bar_w)[None].repeat(bar_h, axis=0)
  grey = np.full((bar_h, bar_w, 3), LEGEND_BACKGROUND, np.uint8)
  strip.paste(Image.fromarray(overlay(grey, values, alpha, *tint_range(threshold))), (x0, pad))
  draw = ImageDraw.Draw(strip)
  draw.text((pad, pad + (bar_h - text_h) // 2), label, fill=(255, 255, 255), font=font)
  tick_y = pad + bar_h
  for value in (0.0, 0.25, 0.5, 0.75, 1.0):
    x = x0 + round(value * (bar_w - 1))
    draw.line([(x, tick_y), (x, tick_y + pad)], fill=(255, 255, 255), width=1)
    text = f"{value:g}"
    draw.text((x - font.getlength(text) / 2, tick_y + pad), text, fill=(255, 255, 255),
              font=font)
  if marked:
    # The mask threshold as a bright bar through the colour bar, its value to the right.
    x = x0 + round(threshold * (bar_w - 1))
    draw.line([(x, pad - pad // 2), (x, pad + bar_h)], fill=(255, 255, 255),
              width=max(2, size // 8))
    draw.text((x0 + bar_w + 2 * pad, pad + (bar_h - text_h) // 2), note,
              fill=(255, 255, 255), font=font)
  return np.asarray(strip, np.uint8)


def panel(image: np.ndarray, anomaly_map: np.ndarray, threshold: float,
          gt_mask: np.ndarray | None = None, title: str | None = None, alpha: float = 0.6,
          separator: int = 2, legend: bool = True) -> np.ndarray:
  """One image side by side: image | tinted overlay | predicted mask | ground truth.

  Above the tiles: the title (if any) and one caption per tile (where the tiles are wide
  enough); below them (`legend`): the overlay's colour scale with the mask threshold marked.
  Text is `font_size(H)` pixels high.

  Args:
    image: (H, W, 3) uint8 (or gray / float [0, 1]).
    anomaly_map: (H, W) in [0, 1].
    threshold: pixels with `anomaly_map >= threshold` form the predicted mask (white).
    gt_mask: (H, W) bool ground truth, or None to leave the last tile out.
    title: optional text (e.g. score and label) written on a black strip above the tiles.
    alpha: the overlay's largest heatmap opacity; the tint grows from 3/4 of `threshold` to
      `threshold` (`tint_range`).
    separator: width in pixels of the white bars between tiles.
    legend: False leaves the captions and the colour scale out (tiles and title only).

  Returns:
    (strips + H + strips, 4 W + 3 separator (3 W + 2 separator without gt), 3) uint8; the
    tiles occupy rows [top, top + H) where top is the height of the title and caption strips.
  """
  image = to_uint8(image)
  h, w = image.shape[:2]
  tiles = [image, overlay(image, anomaly_map, alpha, *tint_range(threshold)),
           _mask_tile(np.asarray(anomaly_map) >= threshold)]
  captions = ["image", "anomaly map", "predicted mask"]
  if gt_mask is not None:
    if np.shape(gt_mask) != image.shape[:2]:
      raise ValueError(f"gt_mask {np.shape(gt_mask)} and image {image.shape[:2]} differ in "
                       "size.")
    tiles.append(_mask_tile(gt_mask))
    captions.append("ground truth")
  out = _hstack(tiles, separator)
  size = font_size(h)
  top, bottom = [], []
  if title:
    top.append(_text_strip([(0, title)], out.shape[1], round(size * 1.25)))
  if legend:
    # Captions only where they fit above their tile (tiny tiles get none rather than a smear).
    if max(_font(size).getlength(c) for c in captions) + size <= w:
      top.append(_text_strip([(i * (w + separator), c) for i, c in enumerate(captions)],
                             out.shape[1], size))
    bottom.append(_legend_strip(out.shape[1], max(2 * w, 128), threshold, size, alpha))
  return np.concatenate([*top, out, *bottom], axis=0)


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
