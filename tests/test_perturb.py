"""draem_jax.simulation.perturb against independent numpy / PIL / scipy definitions."""

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy import ndimage

from draem_jax.simulation import perturb


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (24, 50, 3), dtype=np.uint8)


def _lut(image, fn):
  """Applies a per-value function through PIL's 256-entry lookup table (Image.point)."""
  table = [int(np.clip(np.floor(fn(v) + 0.5), 0, 255)) for v in range(256)] * 3
  return np.asarray(Image.fromarray(image).point(table))


@pytest.mark.parametrize("factor", [0.9, 0.92, 1.1])
def test_brightness(image, factor):
  np.testing.assert_array_equal(perturb.brightness(image, factor),
                                _lut(image, lambda v: v * factor))
  # PIL's own enhancer (a blend with black, rounded its way) agrees to one level.
  pil = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
  assert np.abs(pil.astype(int) - perturb.brightness(image, factor)).max() <= 1


@pytest.mark.parametrize("g", [0.9, 1.1])
def test_gamma(image, g):
  np.testing.assert_array_equal(perturb.gamma(image, g),
                                _lut(image, lambda v: 255.0 * (v / 255.0) ** g))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_contrast_about_the_image_mean(image, factor):
  m = float(np.mean(image, dtype=np.float64))
  np.testing.assert_array_equal(perturb.contrast(image, factor),
                                _lut(image, lambda v: m + factor * (v - m)))
  # About the mean, the mean itself moves only by rounding and clipping.
  assert abs(perturb.contrast(image, factor).mean() - m) < 1.5


def test_gaussian_noise(image):
  noise = np.random.default_rng(7).standard_normal(image.shape) * 2.0
  expected = np.clip(np.floor(image + noise + 0.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(perturb.gaussian_noise(image, 2.0, seed=7), expected)
  assert not np.array_equal(perturb.gaussian_noise(image, 2.0, seed=8), expected)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(255.0**2 / mse))


def test_jpeg_is_the_jpeg_file_at_that_quality(image, tmp_path):
  """perturb.jpeg(x, q) is what an image viewer shows of x saved by PIL as a JPEG file of
  quality q, and of no other quality; higher quality is closer to x."""
  smooth = np.clip(np.add.outer(np.arange(48) * 3.0, np.arange(64) * 2.0), 0, 255)
  smooth = np.stack([smooth, smooth[::-1], 255 - smooth], -1).astype(np.uint8)
  for x in (image, smooth):
    files = {}
    for quality in (30, 75, 95):
      path = tmp_path / f"q{quality}.jpg"
      Image.fromarray(x).save(path, quality=quality)
      with Image.open(path) as f:
        assert f.format == "JPEG"
        files[quality] = np.asarray(f.convert("RGB"))
    for quality, expected in files.items():
      out = perturb.jpeg(x, quality)
      assert out.shape == x.shape and out.dtype == np.uint8
      np.testing.assert_array_equal(out, expected)
      for other, decoded in files.items():
        if other != quality:
          assert not np.array_equal(out, decoded), (quality, other)
    psnr = [_psnr(perturb.jpeg(x, q), x) for q in (30, 75, 95)]
    assert psnr[0] < psnr[1] < psnr[2], psnr
  # A smooth picture survives quality 75 almost unchanged; uniform noise does not.
  assert _psnr(perturb.jpeg(smooth, 75), smooth) > 35
  assert _psnr(perturb.jpeg(image, 75), image) < 25


def test_shift(image):
  out = perturb.shift(image, 0.02)  # round(0.48) = 0 rows, round(1.0) = 1 column.
  expected = ndimage.shift(image, (0, 1, 0), order=0, mode="nearest")
  np.testing.assert_array_equal(out, expected)
  out = perturb.shift(image, 0.1)  # 2 rows, 5 columns.
  np.testing.assert_array_equal(out, ndimage.shift(image, (2, 5, 0), order=0, mode="nearest"))


def test_perturb_batch_names_and_seeds(image):
  batch = np.stack([image, image])
  for name in perturb.PERTURBATIONS:
    out = perturb.perturb_batch(batch, name)
    assert out.shape == batch.shape and out.dtype == np.uint8
  noisy = perturb.perturb_batch(batch, "noise sigma 2/255")
  assert not np.array_equal(noisy[0], noisy[1])  # Each image has its own noise.
