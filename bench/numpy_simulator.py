"""A numpy, one-sample-at-a-time implementation of DRAEM's anomaly simulator.

The speed baseline of bench/simulator.py: the same sampler as draem_jax.simulation.simulator
(DRAEM_SPEC section 4), written the way a per-sample data loader would do it (numpy on the
host, one image at a time, numpy's Generator for the draws). It shares no code with
draem_jax. Perlin noise follows the reference implementation's tiling (the image size must be
a multiple of 2^perlin_max_log2); rotations are bilinear with zero fill about the centre; the
ten texture augmenters use lookup tables and `np.bincount` where the originals are table-based.
"""

import math

import numpy as np

NAMES = ("gamma_contrast", "brightness", "sharpness", "hue_saturation", "solarize",
         "posterize", "invert", "autocontrast", "equalize", "rotate")


def rotate(image: np.ndarray, angle_deg: float) -> np.ndarray:
  """Bilinear rotation about ((H-1)/2, (W-1)/2), zero fill; image (H, W, C) float."""
  height, width = image.shape[:2]
  theta = math.radians(angle_deg)
  cos, sin = math.cos(theta), math.sin(theta)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  yy -= (height - 1) / 2
  xx -= (width - 1) / 2
  src_y = cos * yy + sin * xx + (height - 1) / 2
  src_x = -sin * yy + cos * xx + (width - 1) / 2
  y0 = np.floor(src_y).astype(np.int64)
  x0 = np.floor(src_x).astype(np.int64)
  wy = (src_y - y0)[..., None]
  wx = (src_x - x0)[..., None]
  padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
  inside = (y0 >= -1) & (y0 <= height - 1) & (x0 >= -1) & (x0 <= width - 1)
  yi = np.clip(y0, -1, height - 1) + 1
  xi = np.clip(x0, -1, width - 1) + 1
  top = padded[yi, xi] * (1 - wx) + padded[yi, xi + 1] * wx
  bottom = padded[yi + 1, xi] * (1 - wx) + padded[yi + 1, xi + 1] * wx
  out = top * (1 - wy) + bottom * wy
  out[~inside] = 0
  return out


def perlin(shape, res, rng: np.random.Generator) -> np.ndarray:
  """The reference's tiled Perlin noise (requires shape divisible by res)."""
  def fade(t):
    return 6 * t**5 - 15 * t**4 + 10 * t**3

  d = (shape[0] // res[0], shape[1] // res[1])
  grid = np.stack(np.meshgrid(np.arange(shape[0]) % d[0] / d[0],
                              np.arange(shape[1]) % d[1] / d[1], indexing="ij"), axis=-1)
  angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
  gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

  def tile(rows, cols):
    return np.repeat(np.repeat(gradients[rows, cols], d[0], axis=0), d[1], axis=1)

  def dot(grad, shift):
    return (grid[..., 0] + shift[0]) * grad[..., 0] + (grid[..., 1] + shift[1]) * grad[..., 1]

  n00 = dot(tile(slice(0, -1), slice(0, -1)), (0, 0))
  n10 = dot(tile(slice(1, None), slice(0, -1)), (-1, 0))
  n01 = dot(tile(slice(0, -1), slice(1, None)), (0, -1))
  n11 = dot(tile(slice(1, None), slice(1, None)), (-1, -1))
  t = fade(grid)
  n0 = n00 + t[..., 0] * (n10 - n00)
  n1 = n01 + t[..., 0] * (n11 - n01)
  return math.sqrt(2) * (n0 + t[..., 1] * (n1 - n0))


def _lut(image: np.ndarray, luts: np.ndarray) -> np.ndarray:
  return np.stack([luts[c][image[..., c]] for c in range(image.shape[-1])], axis=-1)


def _hist(channel: np.ndarray) -> np.ndarray:
  return np.bincount(channel.ravel(), minlength=256)


def augment(image: np.ndarray, index: int, rng: np.random.Generator,
            rotate_max_deg: float) -> np.ndarray:
  """One augmenter on a uint8 (H, W, 3) image -> uint8."""
  levels = np.arange(256)
  name = NAMES[index]
  if name == "gamma_contrast":
    gamma = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    table = np.linspace(0, 1, 256, dtype=np.float32)[None, :] ** gamma[:, None] * 255
    return _lut(image, np.clip(table, 0, 255).astype(np.uint8))
  if name == "brightness":
    mul, add, add_first = rng.uniform(0.8, 1.2), round(rng.uniform(-30, 30)), rng.random() < .5
    f = image.astype(np.float32)
    luma = np.round(f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)
    if add_first:
      new = np.floor(np.clip(np.clip(luma + add, 0, 255) * mul, 0, 255))
    else:
      new = np.clip(np.floor(np.clip(luma * mul, 0, 255)) + add, 0, 255)
    return np.clip(f + (new - luma)[..., None], 0, 255).astype(np.uint8)
  if name == "sharpness":
    factor = rng.uniform(0.0, 2.0)
    f = image.astype(np.float32)
    smooth = f.copy()
    box = sum(f[dy:dy + f.shape[0] - 2, dx:dx + f.shape[1] - 2]
              for dy in range(3) for dx in range(3))
    smooth[1:-1, 1:-1] = np.round((box + 4 * f[1:-1, 1:-1]) / 13)
    return np.floor(np.clip(smooth + factor * (f - smooth), 0, 255)).astype(np.uint8)
  if name == "hue_saturation":
    hue_add, sat_add = rng.integers(-50, 51, 2)
    f = image.astype(np.float32) / 255
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    value = f.max(-1)
    chroma = value - f.min(-1)
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.select([chroma == 0, value == r, value == g],
                    [0, ((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4)
    hue = (hue + 2 * int(hue_add * 180 / 255) / 60) % 6
    sat = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0)
    sat = np.clip(sat * 255 + sat_add, 0, 255) / 255
    out = [value - value * sat * np.clip(np.minimum((n + hue) % 6, 4 - (n + hue) % 6), 0, 1)
           for n in (5, 3, 1)]
    return np.clip(np.round(np.stack(out, -1) * 255), 0, 255).astype(np.uint8)
  if name == "solarize":
    apply, threshold = rng.random() < 0.5, int(rng.uniform(32, 128))
    return np.where(apply & (image >= threshold), 255 - image, image).astype(np.uint8)
  if name == "posterize":
    bits = rng.integers(1, 9)
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)
  if name == "invert":
    return 255 - image
  if name == "autocontrast":
    cutoff = rng.integers(0, 21)
    luts = []
    for c in range(3):
      h = _hist(image[..., c])
      cut = h.sum() * cutoff // 100
      lo = int(np.argmax(np.cumsum(h) > cut))
      hi = 255 - int(np.argmax(np.cumsum(h[::-1]) > cut))
      luts.append(levels if hi <= lo else np.clip((levels - lo) * 255 // (hi - lo), 0, 255))
    return _lut(image, np.array(luts, np.uint8))
  if name == "equalize":
    luts = []
    for c in range(3):
      h = _hist(image[..., c])
      nonzero = h[h > 0]
      step = (nonzero.sum() - nonzero[-1]) // 255
      if len(nonzero) <= 1 or step == 0:
        luts.append(levels)
      else:
        luts.append(np.minimum((step // 2 + np.cumsum(h) - h) // step, 255))
    return _lut(image, np.array(luts, np.uint8))
  angle = rng.uniform(-rotate_max_deg, rotate_max_deg)
  return np.clip(np.round(rotate(image.astype(np.float32), angle)), 0, 255).astype(np.uint8)


def simulate_one(rng: np.random.Generator, image: np.ndarray, texture: np.ndarray, cfg):
  """One sample; image, texture (H, W, 3) uint8 -> (target, augmented, mask, has_anomaly).

  `cfg` is config.simulator (attribute access). Outputs are float32, target/augmented in
  [0, 1], mask (H, W, 1).
  """
  height, width = image.shape[:2]
  target = image.astype(np.float32) / 255
  if rng.random() < cfg.rotate_prob:
    target = rotate(target, rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg))
  if rng.random() >= cfg.anomaly_prob:
    return target, target, np.zeros((height, width, 1), np.float32), np.float32(0)
  kx, ky = rng.integers(cfg.perlin_min_log2, cfg.perlin_max_log2 + 1, 2)
  noise = perlin((height, width), (2**kx, 2**ky), rng).astype(np.float32)
  angle = rng.uniform(-cfg.perlin_rotate_max_deg, cfg.perlin_rotate_max_deg)
  mask = (rotate(noise[..., None], angle) > cfg.perlin_threshold).astype(np.float32)
  for index in rng.permutation(len(NAMES))[:cfg.num_augmenters]:
    texture = augment(texture, int(index), rng, cfg.texture_rotate_max_deg)
  source = texture.astype(np.float32) / 255
  beta = np.float32(rng.uniform(0, cfg.beta_max))
  augmented = target * (1 - mask) + (1 - beta) * source * mask + beta * target * mask
  return target, augmented, mask, np.float32(mask.any())


def simulate(rng: np.random.Generator, images: np.ndarray, textures: np.ndarray, cfg):
  """A batch, one sample after another; (B, H, W, 3) uint8 inputs -> stacked outputs."""
  outs = [simulate_one(rng, i, t, cfg) for i, t in zip(images, textures)]
  return tuple(np.stack(x) for x in zip(*outs))
