"""Texture augmenters and rotation against PIL, scipy, colorsys and numpy references."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from draem_jax.simulation import augment

_RNG = np.random.default_rng(0)
# Random RGB, a low-contrast version (autocontrast/equalize have work to do), a constant image
# and a two-level image (degenerate histograms).
IMAGES = {
    "random": _RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8),
    "low_contrast": (_RNG.integers(0, 256, (37, 53, 3)) // 3 + 40).astype(np.uint8),
    "constant": np.full((9, 11, 3), 77, np.uint8),
    "two_levels": np.where(_RNG.random((9, 11, 3)) < 0.3, 10, 200).astype(np.uint8),
}


def _diff(got, expected):
  return np.abs(np.asarray(got).astype(np.int64) - np.asarray(expected).astype(np.int64))


def _assert_close_uint8(got, expected, max_diff=0, max_fraction=0.0):
  """All pixels within max_diff; at most max_fraction of them differ at all."""
  diff = _diff(got, expected)
  assert diff.max() <= max_diff, diff.max()
  assert np.mean(diff > 0) <= max_fraction, np.mean(diff > 0)


def _f(image):
  return jnp.asarray(image, jnp.float32)


@pytest.mark.parametrize("name", list(IMAGES))
def test_pil_exact_augmenters(name):
  image = IMAGES[name]
  pil = Image.fromarray(image)
  x = _f(image)
  for bits in range(1, 9):
    _assert_close_uint8(augment.posterize(x, bits), ImageOps.posterize(pil, bits))
  for threshold in (32.0, 77.9, 127.99):
    _assert_close_uint8(augment.solarize(x, threshold), ImageOps.solarize(pil, int(threshold)))
  _assert_close_uint8(augment.solarize(x, 32.0, False), image)
  _assert_close_uint8(augment.invert(x), ImageOps.invert(pil))
  _assert_close_uint8(augment.equalize(x), ImageOps.equalize(pil))
  # Compiled, where its table is computed once (not fused into the per-pixel lookup).
  _assert_close_uint8(jax.jit(augment.equalize)(x), ImageOps.equalize(pil))


@pytest.mark.parametrize("name", list(IMAGES))
def test_autocontrast_matches_pil(name):
  image = IMAGES[name]
  for cutoff in (0, 1, 5, 20):
    # PIL builds its table in float64, this port with exact integers: at most 1 apart, in
    # table entries where PIL's float sum falls just below an integer (~0.4% of entries).
    _assert_close_uint8(augment.autocontrast(_f(image), cutoff),
                        ImageOps.autocontrast(Image.fromarray(image), cutoff), 1, 0.02)


def test_autocontrast_is_the_exact_integer_stretch():
  """Without cutoff, level v maps to floor((v - lo) * 255 / (hi - lo)) exactly (integers), jitted,
  for 96 random input ranges [lo, hi], every level in them present."""
  rng = np.random.default_rng(1)
  pairs = np.sort(rng.choice(256, (96, 2), replace=False), axis=1)
  images = np.stack([rng.permutation(np.arange(lo, hi + 1)).take(np.arange(256), mode="wrap")
                     for lo, hi in pairs]).T.reshape(16, 16, -1)  # Channel n: pairs[n].
  lo, hi = pairs[:, 0], pairs[:, 1]
  expected = (images.astype(np.int64) - lo) * 255 // (hi - lo)
  got = jax.jit(augment.autocontrast)(_f(images), 0)
  np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("name", ["random", "low_contrast", "constant"])
def test_sharpness_matches_pil(name):
  image = IMAGES[name]
  for factor in (0.0, 0.3, 1.0, 1.5, 1.99):
    expected = ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor)
    _assert_close_uint8(augment.enhance_sharpness(_f(image), factor), expected, 1, 0.005)


def test_gamma_matches_imgaug_formula():
  image = IMAGES["random"]
  gamma = np.array([0.5, 1.37, 2.0], np.float32)
  # imgaug: a float32 table 255 * linspace(0, 1, 256) ** gamma, cast to uint8.
  table = np.linspace(0, 1.0, 256, dtype=np.float32)[:, None] ** gamma * 255
  table = np.clip(table, 0, 255).astype(np.uint8)
  expected = np.stack([table[image[..., c], c] for c in range(3)], axis=-1)
  _assert_close_uint8(augment.gamma_contrast(_f(image), jnp.asarray(gamma)), expected, 1, 0.005)


def _brightness_reference(image, mul, add, add_first):
  """Round trip through 8-bit YCrCb (OpenCV's BT.601 formulas) changing only Y."""
  f = image.astype(np.float64)
  luma = np.round(f @ [0.299, 0.587, 0.114])
  cr = np.clip(np.round((f[..., 0] - luma) * 0.713 + 128), 0, 255)
  cb = np.clip(np.round((f[..., 2] - luma) * 0.564 + 128), 0, 255)
  multiply = lambda y: np.floor(np.clip(y * np.float32(mul), 0, 255))  # pylint: disable=C3001
  shift = lambda y: np.clip(y + np.round(add), 0, 255)  # pylint: disable=C3001
  luma = multiply(shift(luma)) if add_first else shift(multiply(luma))
  rgb = np.stack([luma + 1.403 * (cr - 128),
                  luma - 0.714 * (cr - 128) - 0.344 * (cb - 128),
                  luma + 1.773 * (cb - 128)], axis=-1)
  return np.clip(np.round(rgb), 0, 255)


def test_brightness_matches_ycrcb_round_trip():
  image = IMAGES["random"]
  for mul, add, add_first in ((0.8, -30.0, False), (1.2, 30.0, True), (1.05, 3.4, False),
                              (0.93, -12.6, True)):
    got = augment.brightness(_f(image), mul, add, add_first)
    diff = _diff(got, _brightness_reference(image, mul, add, add_first))
    # The reference also rounds Cr and Cb to 8 bits: a few levels at most, 0.4 on average.
    assert diff.max() <= 2 and diff.mean() <= 0.5, (diff.max(), diff.mean())
  gray = np.repeat(IMAGES["random"][..., :1], 3, axis=-1)  # No chroma: exact.
  _assert_close_uint8(augment.brightness(_f(gray), 1.1, 7.0, False),
                      _brightness_reference(gray, 1.1, 7.0, False))


def _hue_saturation_reference(image, hue_add, sat_add):
  shift = 2 * int(hue_add * 180 / 255) / 360.0  # imgaug's OpenCV units of 2 degrees.
  out = np.zeros(image.shape)
  for i in range(image.shape[0]):
    for j in range(image.shape[1]):
      h, s, v = colorsys.rgb_to_hsv(*(image[i, j] / 255.0))
      out[i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, min(max(s + sat_add / 255.0, 0), 1), v)
  return np.clip(np.round(out * 255), 0, 255)


def test_hue_saturation_matches_colorsys():
  image = IMAGES["random"][:20, :20]
  for hue_add, sat_add in ((-50, 50), (37, -20), (50, -50), (-13, 0)):
    got = augment.add_hue_saturation(_f(image), hue_add, sat_add)
    # Hue steps of 2 degrees put some outputs exactly half-way between two levels, which
    # float32 and float64 round to different sides.
    _assert_close_uint8(got, _hue_saturation_reference(image, hue_add, sat_add), 1, 0.03)
  _assert_close_uint8(augment.add_hue_saturation(_f(image), 0, 0), image)


@pytest.mark.parametrize("angle", [-45.0, -7.5, 13.3, 90.0])
def test_rotate_matches_scipy(angle):
  image = IMAGES["random"].astype(np.float64)
  got = np.asarray(augment.rotate(_f(image), angle))
  # Bilinear with neighbours outside the image read as 0 (OpenCV's BORDER_CONSTANT): scipy's
  # "grid-constant" mode, on every pixel (float32 coordinates: within 2e-3 on 0..255).
  expected = ndimage.rotate(image, angle, axes=(1, 0), order=1, reshape=False,
                            mode="grid-constant", cval=0)
  np.testing.assert_allclose(got, expected, atol=2e-3)
  # scipy's default "constant" mode differs only near the border of the rotated image: compare
  # the pixels whose source and its 1-pixel neighbourhood lie inside the image.
  default = ndimage.rotate(image, angle, axes=(1, 0), order=1, reshape=False, cval=0)
  inside = ndimage.rotate(np.ones(image.shape[:2]), angle, axes=(1, 0), order=1,
                          reshape=False, mode="grid-constant", cval=0) > 1 - 1e-9
  inside = ndimage.binary_erosion(inside, iterations=2)
  assert inside.mean() > 0.3
  np.testing.assert_allclose(got[inside], default[inside], atol=2e-3)
  # Compiled with a traced angle, alone and batched (where its conditional becomes a select).
  jitted = jax.jit(augment.rotate)(_f(image), jnp.float32(angle))
  np.testing.assert_allclose(np.asarray(jitted), expected, atol=2e-3)
  batched = jax.vmap(augment.rotate)(jnp.stack([_f(image)] * 2), jnp.float32([angle, 0.0]))
  np.testing.assert_allclose(np.asarray(batched[0]), expected, atol=2e-3)
  np.testing.assert_allclose(np.asarray(batched[1]), image, atol=2e-3)


def test_rotate_single_channel_and_identity():
  image = _RNG.random((16, 24, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(augment.rotate(jnp.asarray(image), 0.0)), image,
                             atol=1e-6)
  got = np.asarray(augment.rotate(jnp.asarray(image), 90.0))
  # A quarter turn of a non-square image about its centre: the central square block turns.
  expected = ndimage.rotate(image, 90.0, axes=(1, 0), order=1, reshape=False,
                            mode="grid-constant", cval=0)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # An angle that is not finite has no source point inside the image: all fill.
  for angle in (np.nan, np.inf):
    np.testing.assert_array_equal(np.asarray(jax.jit(augment.rotate)(jnp.asarray(image),
                                                                     jnp.float32(angle))), 0.0)


# --- the random augmenters draw their parameters from the reference's ranges ----------------


def _draw(index, image, num=400, rotate_max_deg=45.0):
  uniforms = jax.random.uniform(jax.random.key(index), (num, augment.NUM_UNIFORMS))
  fn = jax.jit(jax.vmap(lambda u: augment.RANDOM_AUGMENTERS[index](u, _f(image),
                                                                   rotate_max_deg)))
  return np.asarray(fn(uniforms))


def test_random_gamma_range():
  ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (2, 1, 3))
  out = _draw(augment.AUGMENTER_NAMES.index("gamma_contrast"), ramp)
  # floor(255 (v/255)^g) at v = 128 and 64 brackets g; per channel draws.
  gamma = np.log((out[:, 0, 128] + 0.5) / 255) / np.log(128 / 255)
  assert gamma.min() > 0.47 and gamma.max() < 2.05
  assert gamma.min() < 0.56 and gamma.max() > 1.9
  assert np.mean(np.std(gamma, axis=-1) > 0.01) > 0.9  # Channels get their own gamma.


def test_random_solarize_probability_and_threshold():
  ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (1, 1, 3))
  out = _draw(augment.AUGMENTER_NAMES.index("solarize"), ramp, num=2000)[:, 0, :, 0]
  inverted = out != np.arange(256)
  applied = inverted.any(axis=1)
  # p = 0.5 over 2000 draws: 4.5 sigma = 0.05.
  assert abs(applied.mean() - 0.5) < 0.05
  thresholds = np.argmax(inverted[applied], axis=1)
  assert thresholds.min() >= 32 and thresholds.max() <= 127
  assert thresholds.min() <= 33 and thresholds.max() >= 126


def test_random_posterize_bits():
  ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (1, 1, 3))
  out = _draw(augment.AUGMENTER_NAMES.index("posterize"), ramp, num=1600)[:, 0, :, 0]
  bits = np.log2([len(np.unique(row)) for row in out]).round().astype(int)
  counts = np.bincount(bits, minlength=9)[1:]
  # U{1..8}: 200 expected per value, 4.5 sigma = 59.
  assert counts.sum() == 1600 and np.all(np.abs(counts - 200) < 59), counts


def test_random_sharpness_factor():
  image = np.full((5, 5, 3), 100, np.uint8)
  image[2, 2] = 120  # SMOOTH gives 108 at the centre: out = floor(108 + 12 f).
  out = _draw(augment.AUGMENTER_NAMES.index("sharpness"), image)[:, 2, 2, 0]
  factor = (out - 108) / 12
  assert factor.min() >= 0 and factor.max() < 2
  assert factor.min() < 0.1 and factor.max() > 1.9


def test_random_hue_saturation_range():
  red = np.zeros((2, 2, 3), np.uint8)
  red[..., 0] = 255
  out = _draw(augment.AUGMENTER_NAMES.index("hue_saturation"), red)[:, 0, 0] / 255.0
  hue = np.array([colorsys.rgb_to_hsv(*rgb)[0] for rgb in out]) * 360
  hue = np.where(hue > 180, hue - 360, hue)
  # h ~ U{-50..50} in imgaug units is at most 2 * trunc(50 * 180 / 255) = 70 degrees.
  assert np.abs(hue).max() <= 70.5
  assert hue.min() < -60 and hue.max() > 60


def test_random_rotate_angle():
  image = np.zeros((33, 33, 3), np.uint8)
  image[15:18, 28:31] = 255  # A blob 13 pixels right of the centre (16, 16).
  out = _draw(augment.AUGMENTER_NAMES.index("rotate"), image)[..., 0].astype(np.float64)
  ys, xs = np.mgrid[0:33, 0:33]
  y = (out * ys).sum(axis=(1, 2)) / out.sum(axis=(1, 2))
  x = (out * xs).sum(axis=(1, 2)) / out.sum(axis=(1, 2))
  angles = np.degrees(np.arctan2(16 - y, x - 16))  # Counter-clockwise as displayed.
  assert np.abs(angles).max() <= 45.5
  assert angles.min() < -40 and angles.max() > 40


def test_draw_augmenters_distinct_and_uniform():
  uniforms = jax.random.uniform(jax.random.key(5), (3000, 3))
  idx = np.asarray(jax.vmap(augment.draw_augmenters)(uniforms))
  assert idx.shape == (3000, 3)
  assert all(len(set(row)) == 3 for row in idx)
  # Every augmenter at every position with frequency 1/10 (4.5 sigma = 0.025).
  for position in range(3):
    freq = np.bincount(idx[:, position], minlength=10) / 3000
    np.testing.assert_allclose(freq, 0.1, atol=0.025)


def test_augment_texture_applies_in_order():
  image = IMAGES["random"][:16, :16]
  key = jax.random.key(3)
  augment_texture = jax.jit(augment.augment_texture)
  got = augment_texture(key, _f(image), jnp.array([6, 5, 4]))  # invert, posterize, solarize
  uniforms = jax.random.uniform(key, (3, augment.NUM_UNIFORMS))
  expected = _f(image)
  for u, i in zip(uniforms, (6, 5, 4)):
    expected = augment.RANDOM_AUGMENTERS[i](u, expected, 45.0)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  # Invert first, then the rest, differs from the reverse order.
  reverse = augment_texture(key, _f(image), jnp.array([4, 5, 6]))
  assert np.any(np.asarray(reverse) != np.asarray(got))
