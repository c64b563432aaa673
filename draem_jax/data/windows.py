"""Windows of images on the device: random training crops and overlapping evaluation tiles.

DRAEM's networks are fully convolutional, so a model trained on crops of a high-resolution
image scores the whole image, or tiles of it when the whole image does not fit in memory.

Training crops (`random_crops`): one window of `data.crop_size` per sample, its position drawn
uniformly from the step's key, so a resumed run, and a run on another number of devices, cuts
exactly the same crops (the draws are a function of (seed, step) only, not of the sharding).

Evaluation tiles (`tile_grid`, `tiled_map`): windows of `eval.tile_size` at a stride of
(1 - eval.tile_overlap) x the tile, the last one flush with the far border so that every pixel
is covered, scored one tile position at a time (a loop: the memory is that of one tile batch)
and blended back into one map: the mean of the overlapping tiles, or a cosine-weighted mean.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Folded into the step's simulator key to draw the crop positions: the simulator itself keeps
# its key, so its draws are those of a run without crops.
CROP_SALT = 0x63726F70  # "crop"
BLENDS = ("mean", "cosine")


def crop_offsets(key: jax.Array, image_hw: tuple[int, int], crop_hw: tuple[int, int],
                 batch: int) -> jax.Array:
  """(batch, 2) int32 (top, left) of crops drawn uniformly inside an image of `image_hw`.

  Every position with the crop fully inside is equally likely: top ~ U{0..H-h}, left ~
  U{0..W-w}, independently per sample.
  """
  (height, width), (h, w) = image_hw, crop_hw
  if not (0 < h <= height and 0 < w <= width):
    raise ValueError(f"crop {crop_hw} does not fit in images of {image_hw}.")
  high = jnp.asarray([height - h + 1, width - w + 1], jnp.int32)
  return jax.random.randint(key, (batch, 2), 0, high, dtype=jnp.int32)


def take_windows(images: jax.Array, offsets: jax.Array, window_hw: tuple[int, int]
                 ) -> jax.Array:
  """(B, H, W, ...) images, (B, 2) offsets -> (B, h, w, ...): one window per image."""
  h, w = window_hw
  rest = images.shape[3:]

  def one(image, offset):
    start = (offset[0], offset[1]) + (0,) * len(rest)
    return jax.lax.dynamic_slice(image, start, (h, w) + rest)

  return jax.vmap(one)(images, offsets)


def put_window(canvas: jax.Array, window: jax.Array, top, left) -> jax.Array:
  """`canvas` (B, H, W) with `window` (B, h, w) added at (top, left) for every image."""
  start = (0, top, left)
  current = jax.lax.dynamic_slice(canvas, start, window.shape)
  return jax.lax.dynamic_update_slice(canvas, current + window, start)


def random_crops(key: jax.Array, images: jax.Array, crop_hw: tuple[int, int]) -> jax.Array:
  """(B, H, W, C) -> (B, h, w, C): a uniformly placed crop of each image (`crop_offsets`)."""
  offsets = crop_offsets(key, images.shape[1:3], crop_hw, images.shape[0])
  return take_windows(images, offsets, crop_hw)


def tile_starts(length: int, tile: int, overlap: float) -> np.ndarray:
  """Start positions along one axis: stride round(tile (1 - overlap)), last tile at the end."""
  if tile >= length:
    return np.zeros(1, np.int64)
  stride = max(1, int(round(tile * (1.0 - overlap))))
  starts = list(range(0, length - tile + 1, stride))
  if starts[-1] != length - tile:
    starts.append(length - tile)
  return np.asarray(starts, np.int64)


def tile_grid(image_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: float
              ) -> np.ndarray:
  """(T, 2) int64 (top, left) of the tiles covering an image of `image_hw`, row-major."""
  ys = tile_starts(image_hw[0], tile_hw[0], overlap)
  xs = tile_starts(image_hw[1], tile_hw[1], overlap)
  return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def tile_weights(tile_hw: tuple[int, int], blend: str = "mean") -> np.ndarray:
  """(h, w) float32 weight of each tile pixel in the blend (all 1 for "mean").

  "cosine": a raised sine, highest in the tile's centre, where the network sees the most
  context, and small but positive at its border (the image's own borders are covered by one
  tile's border only).
  """
  if blend not in BLENDS:
    raise ValueError(f"blend={blend!r} must be one of {BLENDS}.")
  if blend == "mean":
    return np.ones(tile_hw, np.float32)
  wy, wx = (np.sin(np.pi * (np.arange(n) + 0.5) / n) for n in tile_hw)
  return np.outer(wy, wx).astype(np.float32)


def tiled_map(map_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
              tile_hw: tuple[int, int], overlap: float, blend: str = "mean",
              unroll: bool = False) -> jax.Array:
  """Scores (B, H, W, C) images tile by tile; returns the blended (B, H, W) float32 map.

  Args:
    map_fn: (B, h, w, C) -> (B, h, w) anomaly maps of one tile position.
    images: the whole images.
    tile_hw: (h, w) of a tile, at most (H, W).
    overlap: fraction of a tile shared with its neighbour, in [0, 1).
    blend: "mean" (plain average where tiles overlap) or "cosine" (`tile_weights`).
    unroll: a Python loop over the tiles instead of `lax.fori_loop` (graphs exported to ONNX,
      whose converter takes static slices).

  Returns:
    sum over tiles of weight x map / sum of weights, per pixel.
  """
  b, height, width = images.shape[:3]
  th, tw = min(tile_hw[0], height), min(tile_hw[1], width)
  grid = tile_grid((height, width), (th, tw), overlap)
  weights = tile_weights((th, tw), blend)
  # The normaliser depends on the grid only: computed once, on the host.
  total = np.zeros((height, width), np.float32)
  for top, left in grid:
    total[top:top + th, left:left + tw] += weights
  canvas = jnp.zeros((b, height, width), jnp.float32)
  w = jnp.asarray(weights)

  def score(tile):
    return map_fn(tile).astype(jnp.float32) * w

  if unroll or len(grid) == 1:
    for top, left in grid:
      tile = images[:, top:top + th, left:left + tw]
      canvas = canvas.at[:, top:top + th, left:left + tw].add(score(tile))
  else:
    starts = jnp.asarray(grid, jnp.int32)

    def body(i, canvas):
      top, left = starts[i, 0], starts[i, 1]
      tile = jax.lax.dynamic_slice(images, (0, top, left, 0), (b, th, tw, images.shape[3]))
      return put_window(canvas, score(tile), top, left)

    canvas = jax.lax.fori_loop(0, len(grid), body, canvas)
  return canvas / jnp.asarray(total)
