"""Rotation and the ten texture augmenters of DRAEM, in jax.numpy, for one image.

DRAEM (reference loader, imgaug 0.4) augments the anomaly-source texture with three distinct
augmenters drawn out of ten and applied in the drawn order, on uint8 images. Here an image is
(H, W, 3) float32 holding uint8 values 0..255; every augmenter rounds/truncates and clips its
result back onto the integers 0..255 the way its uint8 original does, so the next augmenter
sees what it would see in the reference (histogram-based ones need integer values).

The augmenters and the parameter ranges of the reference (imgaug defaults where DRAEM passes
none; checked in imgaug 0.4.0's source):

  0 gamma_contrast   GammaContrast((0.5, 2.0), per_channel=True): floor(255 (v/255)^g),
                     g ~ U(0.5, 2) per channel.
  1 brightness       MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)); see below.
  2 sharpness        pillike.EnhanceSharpness(): PIL ImageEnhance.Sharpness, factor ~ U(0, 2).
  3 hue_saturation   AddToHueAndSaturation((-50, 50), per_channel=True); see below.
  4 solarize         Solarize(0.5, threshold=(32, 128)): with p 0.5, v >= floor(t) -> 255 - v,
                     t ~ U(32, 128) (PIL ImageOps.solarize).
  5 posterize        Posterize() (= UniformColorQuantizationToNBits): keep b ~ U{1..8} high
                     bits (PIL ImageOps.posterize).
  6 invert           Invert() (p 1): 255 - v.
  7 autocontrast     pillike.Autocontrast(): PIL ImageOps.autocontrast per channel, cutoff ~
                     U{0..20} percent, the same for all channels.
  8 equalize         pillike.Equalize(): PIL ImageOps.equalize per channel.
  9 rotate           Affine(rotate=(-45, 45)): bilinear (order 1), fill 0, about the centre,
                     rounded; the bound is config `texture_rotate_max_deg`.

Semantics that differ from the reference, on purpose:
- brightness: imgaug converts each image to one of six colour spaces drawn at random (YCrCb,
  HSV, HLS, Lab, Luv, YUV) and changes the brightness channel there. Here it is always Y of
  YCrCb (BT.601 luma, Y = round(0.299 R + 0.587 G + 0.114 B)): Y' = clip(floor(Y * mul)) and
  Y' = clip(Y + round(add)) in random order (p 0.5 each, as imgaug's `random_order=True`),
  and R, G, B are all shifted by Y' - Y, which is what converting back from YCrCb with
  unchanged chroma does (without the uint8 rounding of Cr and Cb).
- hue/saturation: imgaug draws two integers h, s ~ U{-50..50}, converts to OpenCV's uint8 HSV
  (H in 2-degree steps 0..179, S and V 0..255), adds trunc(h * 180 / 255) to H modulo 180 and
  s to S clipped to 0..255, and converts back. Here the same shifts are applied to continuous
  HSV (hue shift 2 * trunc(h * 180 / 255) degrees; S in 0..255 units, clipped; V unchanged)
  and the result is rounded: identical up to OpenCV's quantisation of H and S.
- autocontrast: PIL computes its table in float64; here each pixel gets the exact integer
  floor((v - lo) * 255 / (hi - lo)), 1 level apart in about 0.4% of table entries.
Everything else matches its PIL/imgaug original up to float32 rounding at exact integer or
half-integer boundaries (a difference of 1 in rare pixels); tests/test_augment.py compares
each against PIL, scipy, colorsys or numpy.
"""

from typing import Callable

import jax
import jax.numpy as jnp

AUGMENTER_NAMES = (
    "gamma_contrast", "brightness", "sharpness", "hue_saturation", "solarize", "posterize",
    "invert", "autocontrast", "equalize", "rotate",
)
NUM_AUGMENTERS = len(AUGMENTER_NAMES)

# Parameter ranges of the reference (see the module docstring).
GAMMA_RANGE = (0.5, 2.0)
BRIGHTNESS_MUL_RANGE = (0.8, 1.2)
BRIGHTNESS_ADD_RANGE = (-30.0, 30.0)
SHARPNESS_FACTOR_RANGE = (0.0, 2.0)
HUE_SATURATION_RANGE = (-50, 50)  # Inclusive integers, in imgaug's units.
SOLARIZE_PROB = 0.5
SOLARIZE_THRESHOLD_RANGE = (32.0, 128.0)
POSTERIZE_BITS_RANGE = (1, 8)  # Inclusive.
AUTOCONTRAST_CUTOFF_RANGE = (0, 20)  # Inclusive, percent.


def _quantize(x: jax.Array) -> jax.Array:
  """Rounds to the nearest integer and clips to 0..255, like a saturating uint8 cast."""
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def _truncate(x: jax.Array) -> jax.Array:
  """Clips to 0..255 and truncates, like numpy's astype(uint8) after a clip (PIL's casts)."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0))


# --- geometry ------------------------------------------------------------------------------


def rotate(image: jax.Array, angle_deg: jax.Array) -> jax.Array:
  """Rotates about the image centre, bilinear, filling with 0.

  Same as `scipy.ndimage.rotate(image, angle_deg, axes=(1, 0), order=1, reshape=False,
  mode="grid-constant", cval=0)`: positive angles turn the content counter-clockwise as
  displayed; the centre is ((H - 1) / 2, (W - 1) / 2) as in imgaug's `Affine`; neighbours
  outside the image count as 0 (OpenCV's BORDER_CONSTANT, which imgaug uses).

  Args:
    image: (H, W, C) float.
    angle_deg: scalar angle in degrees (may be traced).

  Returns:
    (H, W, C) float32, not rounded.
  """
  height, width, channels = image.shape
  theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  yy = jnp.arange(height, dtype=jnp.float32)[:, None] - cy
  xx = jnp.arange(width, dtype=jnp.float32)[None, :] - cx
  src_y = cos * yy + sin * xx + cy
  src_x = -sin * yy + cos * xx + cx
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  wy, wx = src_y - y0, src_x - x0
  # Zero padding of one pixel makes every neighbour of a source point within [-1, H] x [-1, W]
  # readable; points further out read nothing at all. The zero-padded image is read as rows of
  # C values, one per pixel: the top neighbours (y, x), (y, x + 1) of a point are one (2, C)
  # window at row idx, the bottom ones one at idx + padded_width (the clips keep both in
  # bounds). Two window gathers in the image's own (H, W, C) layout measured ~2x faster on CPU
  # than four scalar gathers from channel planes, whose transposes XLA spread to the callers.
  inside = (y0 >= -1) & (y0 <= height - 1) & (x0 >= -1) & (x0 <= width - 1)
  yi = jnp.clip(y0, -1, height - 1).astype(jnp.int32) + 1
  xi = jnp.clip(x0, -1, width - 1).astype(jnp.int32) + 1
  padded_width = width + 2
  idx = yi * padded_width + xi
  pixels = jnp.pad(image.astype(jnp.float32), ((1, 1), (1, 1), (0, 0))).reshape(-1, channels)
  dims = jax.lax.GatherDimensionNumbers(offset_dims=(2, 3), collapsed_slice_dims=(),
                                        start_index_map=(0,))

  def interpolate(idx, wx, wy, inside, pixels):
    def window(start):  # (H, W) row indices -> (H, W, 2, C) values of rows start, start + 1.
      return jax.lax.gather(pixels, start[..., None], dims, slice_sizes=(2, channels),
                            mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)

    upper, lower = window(idx), window(idx + padded_width)
    wx, wy = wx[..., None], wy[..., None]
    top = upper[..., 0, :] + wx * (upper[..., 1, :] - upper[..., 0, :])
    bottom = lower[..., 0, :] + wx * (lower[..., 1, :] - lower[..., 0, :])
    return jnp.where(inside[..., None], top + wy * (bottom - top), 0.0)

  def nothing_inside(idx, wx, wy, inside, pixels):
    del idx, wy, inside, pixels
    # Zeros derived from an operand carry its sharding, as `cond` needs under an Explicit mesh.
    return jnp.broadcast_to(jnp.zeros_like(wx)[..., None], (height, width, channels))

  # The conditional is there for speed: its operands are computed into memory once, whereas
  # XLA:CPU otherwise fuses the coordinate arithmetic into the gathers and repeats it for every
  # neighbour and channel read, 3.6x slower with a traced angle (`lax.optimization_barrier`
  # does not stop that on CPU). Its short cut is taken only for an angle that is not finite,
  # where no point is inside (a finite rotation about the centre keeps the centre in view), so
  # the result is the same either way. Under `vmap` it is a select.
  return jax.lax.cond(jnp.isfinite(theta), interpolate, nothing_inside, idx, wx, wy, inside,
                      pixels)


# --- per-pixel augmenters ------------------------------------------------------------------


def gamma_contrast(image: jax.Array, gamma: jax.Array) -> jax.Array:
  """imgaug `GammaContrast` on uint8: floor(255 * (v / 255) ** gamma).

  Computed like imgaug, as a float32 table of the 256 levels (a table lookup is also cheaper
  than a power per pixel).

  Args:
    image: (H, W, C) float32 with values 0..255.
    gamma: scalar or (C,) per-channel exponent.

  Returns:
    (H, W, C) float32 integers 0..255.
  """
  channels = image.shape[-1]
  gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (channels,))
  levels = jnp.arange(256, dtype=jnp.float32) / 255.0
  luts = _truncate(255.0 * jnp.power(levels[None, :], gamma[:, None]))
  return _apply_luts(image, luts)


def brightness(image: jax.Array, mul: jax.Array, add: jax.Array,
               add_first: jax.Array) -> jax.Array:
  """Multiplies and shifts the BT.601 luma (see the module docstring for the semantics).

  Args:
    image: (H, W, 3) float32 RGB with values 0..255.
    mul: scalar multiplier.
    add: scalar offset (rounded to an integer, as imgaug's `Add` does on uint8).
    add_first: scalar bool; True applies the offset before the multiplier.

  Returns:
    (H, W, 3) float32 integers 0..255.
  """
  luma = jnp.round(image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114)
  add = jnp.round(add)

  def multiply(y):
    return _truncate(y * mul)

  def shift(y):
    return jnp.clip(y + add, 0.0, 255.0)

  new_luma = jnp.where(add_first, multiply(shift(luma)), shift(multiply(luma)))
  return jnp.clip(image + (new_luma - luma)[..., None], 0.0, 255.0)


def _smooth(image: jax.Array) -> jax.Array:
  """PIL `ImageFilter.SMOOTH` (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13), border pixels copied.

  Computed on the (H, W * C) view of the image, where a pixel's horizontal neighbours are C
  columns away: XLA:CPU vectorises a fused loop along its last axis, which is W * C long there
  instead of C (measured 2x faster at 256x256x3), and the border is selected in the same pass.
  """
  height, width, channels = image.shape
  flat = image.reshape(height, width * channels)
  padded = jnp.pad(flat, ((1, 1), (channels, channels)))
  rows = padded[:-2] + padded[1:-1] + padded[2:]  # Separable 3x3 box sum.
  box = rows[:, :-2 * channels] + rows[:, channels:-channels] + rows[:, 2 * channels:]
  smooth = _quantize((box + 4.0 * flat) / 13.0)
  i = jnp.arange(height)[:, None]
  j = jnp.arange(width * channels)[None, :]
  border = (i == 0) | (i == height - 1) | (j < channels) | (j >= (width - 1) * channels)
  return jnp.where(border, flat, smooth).reshape(image.shape)


def enhance_sharpness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL `ImageEnhance.Sharpness(image).enhance(factor)`.

  Blends the SMOOTH-filtered image (factor 0) with the image (factor 1), extrapolating above
  1, truncated to uint8 as PIL's `Image.blend` does.

  Args:
    image: (H, W, C) float32 with values 0..255 (H, W >= 3 for the filter to have an inside).
    factor: scalar.

  Returns:
    (H, W, C) float32 integers 0..255.
  """
  degenerate = _smooth(image)
  return _truncate(degenerate + factor * (image - degenerate))


def add_hue_saturation(image: jax.Array, hue_add: jax.Array, sat_add: jax.Array) -> jax.Array:
  """imgaug `AddToHueAndSaturation` with continuous HSV (see the module docstring).

  Args:
    image: (H, W, 3) float32 RGB with values 0..255.
    hue_add: scalar in imgaug units (-255..255); the hue turns by 2 * trunc(hue_add * 180 /
      255) degrees (OpenCV's 2-degree hue units).
    sat_add: scalar added to the saturation in 0..255 units, result clipped to 0..255.

  Returns:
    (H, W, 3) float32 integers 0..255.
  """
  # (H, W, 1) planes broadcast against the three output channels below: XLA:CPU recomputes
  # the per-pixel HSV values for each output channel either way, and this form (one division,
  # none for the saturation) measured 1.7x faster than stacking three channel planes.
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  inv_chroma = 1.0 / jnp.maximum(chroma, 1.0)  # Grey pixels (chroma 0) get hue 0 below.
  # Hue in sextants [0, 6), plus the shift.
  hue = jnp.where(value == r, (g - b) * inv_chroma,
                  jnp.where(value == g, (b - r) * inv_chroma + 2.0, (r - g) * inv_chroma + 4.0))
  hue = hue + 2.0 * jnp.trunc(hue_add * 180.0 / 255.0) / 60.0
  # V * S' with S' = clip(S * 255 + sat_add, 0, 255) / 255 and S = chroma / V, without the
  # division: clip(chroma * 255 + sat_add * V, 0, 255 V) / 255 (0 where V = 0).
  value_sat = jnp.clip(chroma * 255.0 + sat_add * value, 0.0, 255.0 * value) / 255.0
  # HSV -> RGB: channel n (5, 3, 1 for R, G, B) is v - v s clip(min(k, 4 - k), 0, 1) with
  # k = (n + h) mod 6 (a floor, not `mod`, which is slow on CPU).
  k = jnp.array([5.0, 3.0, 1.0]) + hue
  k = k - 6.0 * jnp.floor(k / 6.0)
  return _quantize(value - value_sat * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))


def solarize(image: jax.Array, threshold: jax.Array, apply: jax.Array = True) -> jax.Array:
  """imgaug `Solarize` / PIL `ImageOps.solarize`: values >= floor(threshold) become 255 - v.

  Args:
    image: (H, W, C) float32 with values 0..255.
    threshold: scalar (truncated to an integer as imgaug does).
    apply: scalar bool; False returns the image unchanged (imgaug's per-image p).

  Returns:
    (H, W, C) float32.
  """
  return jnp.where(apply & (image >= jnp.floor(threshold)), 255.0 - image, image)


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
  """PIL `ImageOps.posterize` / imgaug `Posterize`: keeps the `bits` (1..8) high bits."""
  step = jnp.exp2(8.0 - jnp.asarray(bits, jnp.float32))
  return jnp.floor(image / step) * step


def invert(image: jax.Array) -> jax.Array:
  """PIL `ImageOps.invert`: 255 - v."""
  return 255.0 - image


# --- histogram augmenters ------------------------------------------------------------------


def _histograms(image: jax.Array) -> jax.Array:
  """(C, 256) int32 per-channel histograms of an integer-valued (H, W, C) image."""
  channels = image.shape[-1]
  bins = image.reshape(-1, channels).astype(jnp.int32) + 256 * jnp.arange(channels)
  return jnp.zeros(256 * channels, jnp.int32).at[bins.reshape(-1)].add(1).reshape(channels, 256)


def _materialize_table(table: jax.Array) -> jax.Array:
  """Returns a small (C, 256) integer table as float32, forced into memory.

  XLA fuses the elementwise ops that compute a table into the per-pixel gather that reads it,
  so each pixel recomputes its entry (integer divisions included): equalize ran ~2.5x slower
  on CPU that way (bench/simulator_parts.py). A dot is never fused into its consumer, and a
  product with the identity at HIGHEST precision is exact for integers below 2^24; it costs
  C * 256^2 multiply-adds (microseconds).
  """
  table = table.astype(jnp.float32)
  return jnp.dot(table, jnp.eye(table.shape[-1], dtype=jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)


def _apply_luts(image: jax.Array, luts: jax.Array) -> jax.Array:
  """out[..., c] = luts[c, image[..., c]] for an integer-valued image; luts (C, 256)."""
  channels = image.shape[-1]
  idx = image.astype(jnp.int32) + 256 * jnp.arange(channels)
  return _materialize_table(luts).reshape(-1)[idx]


def _equalize_lut(hist: jax.Array) -> jax.Array:
  """PIL's equalize table for one channel histogram (256,) -> (256,) int32."""
  levels = jnp.arange(256)
  total = jnp.sum(hist)
  last = jnp.max(jnp.where(hist > 0, levels, -1))  # Highest occupied level.
  step = (total - hist[last]) // 255
  cum_before = jnp.cumsum(hist) - hist
  lut = jnp.minimum((step // 2 + cum_before) // jnp.maximum(step, 1), 255)
  identity = (jnp.sum(hist > 0) <= 1) | (step == 0)
  return jnp.where(identity, levels, lut)


def equalize(image: jax.Array) -> jax.Array:
  """PIL `ImageOps.equalize`, per channel.

  Args:
    image: (H, W, C) float32 integers 0..255.

  Returns:
    (H, W, C) float32 integers 0..255.
  """
  luts = jax.vmap(_equalize_lut)(_histograms(image))
  return _apply_luts(image, luts)


def _autocontrast_range(hist: jax.Array, cutoff: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PIL's autocontrast input range (lo, hi) for one channel histogram (256,), cutoff percent."""
  total = jnp.sum(hist)
  cut = (total * cutoff) // 100
  # Lowest level left after removing `cut` pixels from the dark end, highest after removing
  # `cut` from the bright end (PIL removes them bin by bin; this is the closed form).
  lo = jnp.argmax(jnp.cumsum(hist) > cut)
  hi = 255 - jnp.argmax(jnp.cumsum(hist[::-1]) > cut)
  return lo, hi


def autocontrast(image: jax.Array, cutoff: jax.Array) -> jax.Array:
  """PIL `ImageOps.autocontrast(image, cutoff)`, per channel.

  PIL maps level v to int(v * 255.0 / (hi - lo) - lo * 255.0 / (hi - lo)) in float64 through a
  table. This computes the exact integer floor((v - lo) * 255 / (hi - lo)) per pixel instead:
  it differs from PIL's float64 sum only where that sum lands just below an exact integer
  (about 0.4% of table entries, by 1). Unlike a table lookup (a gather) this vectorises on CPU.

  Args:
    image: (H, W, C) float32 integers 0..255.
    cutoff: scalar integer percent cut from each end of each channel's histogram.

  Returns:
    (H, W, C) float32 integers 0..255.
  """
  cutoff = jnp.asarray(cutoff, jnp.int32)
  lo, hi = jax.vmap(_autocontrast_range, in_axes=(0, None))(_histograms(image), cutoff)
  lo, hi = lo.astype(jnp.float32), hi.astype(jnp.float32)  # (C,), broadcast over pixels.
  numerator, denominator = (image - lo) * 255.0, jnp.maximum(hi - lo, 1.0)
  quotient = jnp.floor(numerator / denominator)
  # XLA may divide through a reciprocal, one off near integers: correct with exact products.
  quotient = (quotient + (quotient * denominator + denominator <= numerator) -
              (quotient * denominator > numerator))
  return jnp.where(hi <= lo, image, jnp.clip(quotient, 0.0, 255.0))


# --- random augmenters ---------------------------------------------------------------------
#
# Each random augmenter maps NUM_UNIFORMS uniform [0, 1) numbers to its parameters, so that one
# `jax.random.uniform` call serves all ten: every threefry call is compiled separately (seconds
# of XLA:CPU compile time in all), and the switch over ten augmenters would otherwise hold ten.

NUM_UNIFORMS = 3


def _between(u, bounds):
  return bounds[0] + u * (bounds[1] - bounds[0])


def _integer(u, bounds):
  """Uniform on the integers bounds[0]..bounds[1] inclusive, from u in [0, 1)."""
  return bounds[0] + jnp.floor(u * (bounds[1] - bounds[0] + 1))


def _random_gamma(u, image, rotate_max_deg):
  del rotate_max_deg
  return gamma_contrast(image, _between(u[:3], GAMMA_RANGE))  # Per channel.


def _random_brightness(u, image, rotate_max_deg):
  del rotate_max_deg
  return brightness(image, _between(u[0], BRIGHTNESS_MUL_RANGE),
                    _between(u[1], BRIGHTNESS_ADD_RANGE), u[2] < 0.5)


def _random_sharpness(u, image, rotate_max_deg):
  del rotate_max_deg
  return enhance_sharpness(image, _between(u[0], SHARPNESS_FACTOR_RANGE))


def _random_hue_saturation(u, image, rotate_max_deg):
  del rotate_max_deg
  return add_hue_saturation(image, _integer(u[0], HUE_SATURATION_RANGE),
                            _integer(u[1], HUE_SATURATION_RANGE))


def _random_solarize(u, image, rotate_max_deg):
  del rotate_max_deg
  return solarize(image, _between(u[1], SOLARIZE_THRESHOLD_RANGE), u[0] < SOLARIZE_PROB)


def _random_posterize(u, image, rotate_max_deg):
  del rotate_max_deg
  return posterize(image, _integer(u[0], POSTERIZE_BITS_RANGE))


def _random_invert(u, image, rotate_max_deg):
  del u, rotate_max_deg
  return invert(image)


def _random_autocontrast(u, image, rotate_max_deg):
  del rotate_max_deg
  return autocontrast(image, _integer(u[0], AUTOCONTRAST_CUTOFF_RANGE).astype(jnp.int32))


def _random_equalize(u, image, rotate_max_deg):
  del u, rotate_max_deg
  return equalize(image)


def _random_rotate(u, image, rotate_max_deg):
  angle = _between(u[0], (-rotate_max_deg, rotate_max_deg))
  return _quantize(rotate(image, angle))  # imgaug's Affine writes uint8: rounded.


# Index i of this tuple is AUGMENTER_NAMES[i]; each takes (u, image, rotate_max_deg) with u a
# (NUM_UNIFORMS,) float32 vector uniform in [0, 1).
RANDOM_AUGMENTERS: tuple[Callable[..., jax.Array], ...] = (
    _random_gamma, _random_brightness, _random_sharpness, _random_hue_saturation,
    _random_solarize, _random_posterize, _random_invert, _random_autocontrast,
    _random_equalize, _random_rotate,
)


def draw_augmenters(u: jax.Array) -> jax.Array:
  """Distinct augmenter indices out of the ten, uniformly, in application order.

  Sequential draws without replacement: the p-th index is uniform over the 10 - p not yet
  drawn, so every ordered selection is equally likely.

  Args:
    u: (n,) float32 uniform in [0, 1), n <= 10 (one number per augmenter to draw).

  Returns:
    (n,) int32 indices into AUGMENTER_NAMES.
  """
  unused = jnp.ones(NUM_AUGMENTERS, bool)
  indices = []
  for position in range(u.shape[0]):
    rank = jnp.floor(u[position] * (NUM_AUGMENTERS - position))
    index = jnp.argmax(jnp.cumsum(unused) > rank).astype(jnp.int32)  # The rank-th unused.
    unused = unused.at[index].set(False)
    indices.append(index)
  return jnp.stack(indices) if indices else jnp.zeros((0,), jnp.int32)


def apply_augmenter(index: jax.Array, u: jax.Array, image: jax.Array,
                    rotate_max_deg: float = 45.0) -> jax.Array:
  """Applies augmenter number `index` (traced) with parameters from the uniforms `u`.

  A `lax.switch`: in a per-sample loop only the selected augmenter runs; under `vmap` all ten
  run and the result is selected.

  Args:
    index: scalar int32 in 0..9, see AUGMENTER_NAMES.
    u: (NUM_UNIFORMS,) float32 uniform in [0, 1), mapped to the augmenter's parameters.
    image: (H, W, 3) float32 integers 0..255.
    rotate_max_deg: static bound of the rotate augmenter's angle.

  Returns:
    (H, W, 3) float32 integers 0..255.
  """
  branches = [lambda v, x, f=f: f(v, x, rotate_max_deg) for f in RANDOM_AUGMENTERS]
  return jax.lax.switch(index, branches, u, image.astype(jnp.float32))


def augment_texture(key: jax.Array, image: jax.Array, indices: jax.Array,
                    rotate_max_deg: float = 45.0) -> jax.Array:
  """Applies the augmenters `indices` in order, with parameters drawn from `key`.

  Args:
    key: PRNG key.
    image: (H, W, 3) float32 integers 0..255 (a texture).
    indices: (n,) int32 augmenter indices, e.g. from `draw_augmenters`.
    rotate_max_deg: static bound of the rotate augmenter's angle.

  Returns:
    (H, W, 3) float32 integers 0..255.
  """
  num = indices.shape[0]
  if num == 0:
    return image.astype(jnp.float32)
  uniforms = jax.random.uniform(key, (num, NUM_UNIFORMS), jnp.float32)

  def step(i, image):  # One switch in a loop compiles the ten augmenters once, not n times.
    return apply_augmenter(indices[i], uniforms[i], image, rotate_max_deg)

  return jax.lax.fori_loop(0, num, step, image.astype(jnp.float32))
