"""Nuisance perturbations of test images (lighting, sensor, compression, position drift).

Each function takes and returns (H, W, 3) uint8 images (values rounded half up and clipped to
0..255), so that they apply to any image a user scores. `PERTURBATIONS` names the set that
bench/robustness.py measures.

Definitions (x the image in 0..255 as float):
  brightness(f):  f x
  contrast(f):    m + f (x - m), m the mean of x over all pixels and channels (about the
                  image's own mean, not about 128, so that it does not change the brightness)
  gamma(g):       255 (x / 255)^g
  noise(sigma):   x + N(0, sigma^2) per pixel and channel, sigma in 0..255 units, from
                  numpy's default_rng(seed)
  jpeg(q):        encoded and decoded by PIL at quality q (4:2:0 chroma subsampling, PIL's
                  default)
  shift(frac):    moved right and down by round(frac * H) rows and round(frac * W) columns; the
                  uncovered border repeats the nearest edge pixel (a real camera sees more of
                  the scene there, not black)
"""

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)  # Half up, as PIL's tables.


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """Multiplies every pixel by `factor` ((H, W, 3) uint8 -> uint8)."""
  return _to_uint8(image.astype(np.float64) * factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Scales the deviation from the image's mean by `factor` ((H, W, 3) uint8 -> uint8)."""
  x = image.astype(np.float64)
  m = x.mean()
  return _to_uint8(m + factor * (x - m))


def gamma(image: np.ndarray, g: float) -> np.ndarray:
  """255 (x / 255)^g ((H, W, 3) uint8 -> uint8); g < 1 brightens the mid-tones."""
  return _to_uint8(255.0 * (image.astype(np.float64) / 255.0) ** g)


def gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
  """Adds N(0, sigma^2) noise (sigma in 0..255 units) drawn from default_rng(seed)."""
  noise = np.random.default_rng(seed).normal(0.0, sigma, image.shape)
  return _to_uint8(image.astype(np.float64) + noise)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """JPEG round trip through PIL at `quality` ((H, W, 3) uint8 -> uint8)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
  buf.seek(0)
  return np.asarray(Image.open(buf).convert("RGB"))


def shift(image: np.ndarray, fraction: float) -> np.ndarray:
  """Moves the image right and down by `fraction` of its size, repeating the edge pixels."""
  h, w = image.shape[:2]
  dy, dx = int(round(fraction * h)), int(round(fraction * w))
  padded = np.pad(image, ((dy, 0), (dx, 0), (0, 0)), mode="edge")
  return padded[:h, :w]


# name -> function of one (H, W, 3) uint8 image; the image index seeds the noise so that every
# image gets its own, reproducible noise.
PERTURBATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "brightness x0.90": lambda x, i: brightness(x, 0.90),
    "brightness x0.92": lambda x, i: brightness(x, 0.92),
    "brightness x0.95": lambda x, i: brightness(x, 0.95),
    "brightness x1.05": lambda x, i: brightness(x, 1.05),
    "brightness x1.10": lambda x, i: brightness(x, 1.10),
    "contrast -10%": lambda x, i: contrast(x, 0.9),
    "contrast +10%": lambda x, i: contrast(x, 1.1),
    "gamma 0.9": lambda x, i: gamma(x, 0.9),
    "gamma 1.1": lambda x, i: gamma(x, 1.1),
    "noise sigma 2/255": lambda x, i: gaussian_noise(x, 2.0, seed=i),
    "jpeg q75": lambda x, i: jpeg(x, 75),
    "shift 2%": lambda x, i: shift(x, 0.02),
}


def perturb_batch(images: np.ndarray, name: str) -> np.ndarray:
  """(N, H, W, 3) uint8 -> the perturbation `name` of `PERTURBATIONS` applied to each image."""
  fn = PERTURBATIONS[name]
  return np.stack([fn(image, i) for i, image in enumerate(images)])
