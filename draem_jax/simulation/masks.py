"""Anomaly mask generators of the simulator (`simulator.mask_shape`), pure functions of a key.

* `perlin_mask`: DRAEM's mask (DRAEM_SPEC section 4), thresholded rotated Perlin noise;
* `rectangle_mask`: the paper's DRAEM_rect ablation (its Table 3), the union of a few
  axis-aligned random rectangles. The paper gives neither their count nor their size; ours
  are chosen so that the mean coverage matches the Perlin masks' (4.9% at 256 x 256):
  count ~ U{1..RECT_MAX_COUNT}, each side ~ U(RECT_SIDE_MIN, RECT_SIDE_MAX) times the image
  side (rounded, at least one pixel), placed uniformly inside the image. Measured over 3,000
  masks at 256 x 256 (tests/test_masks.py): mean coverage 4.92%, median 4.62%, p99 12.2%
  (Perlin: 4.9%, 4.6%, 17%), never empty (5.6% of Perlin masks are); the same at 64 x 64.
"""

import jax
import jax.numpy as jnp

from draem_jax.simulation import augment
from draem_jax.simulation import perlin

RECT_MAX_COUNT = 4
RECT_SIDE_MIN = 0.04
RECT_SIDE_MAX = 0.245


def perlin_mask(key: jax.Array, log2_res: jax.Array, shape: tuple[int, int], max_log2: int,
                rotate_max_deg: float, threshold: float) -> jax.Array:
  """Perlin mask for a given lattice resolution: gradients, noise, rotation, threshold.

  Args:
    key: PRNG key for the gradient angles and the rotation angle.
    log2_res: (2,) int32 (kx, ky); the lattice has (2^kx, 2^ky) cells along (rows, columns).
    shape: static (H, W).
    max_log2: the largest k drawn (the gradient grid is (2^max_log2 + 1)^2 for every k, so
      that one generator call of a fixed size serves all resolutions).
    rotate_max_deg: the noise is rotated by U(-rotate_max_deg, rotate_max_deg) degrees.
    threshold: mask = rotated noise > threshold.

  Returns:
    (H, W, 1) float32 in {0, 1}.
  """
  size = 2**max_log2 + 1
  u = jax.random.uniform(key, (size * size + 1,), jnp.float32)  # One generator call.
  gradients = perlin.unit_gradients(u[:-1].reshape(size, size))
  noise = perlin.perlin_noise(gradients, jnp.left_shift(1, log2_res), shape)
  angle = (2.0 * u[-1] - 1.0) * rotate_max_deg
  noise = augment.rotate(noise[..., None], angle)
  return (noise > threshold).astype(jnp.float32)


def rectangle_mask(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Union of n ~ U{1..RECT_MAX_COUNT} axis-aligned rectangles (see the module docstring).

  Args:
    key: PRNG key of the count, the sides and the positions.
    shape: static (H, W).

  Returns:
    (H, W, 1) float32 in {0, 1}, never empty.
  """
  h, w = shape
  u = jax.random.uniform(key, (1 + 4 * RECT_MAX_COUNT,), jnp.float32)
  count = 1 + jnp.floor(u[0] * RECT_MAX_COUNT)
  rect = u[1:].reshape(RECT_MAX_COUNT, 4)  # (side_y, side_x, top, left) draws per rectangle.
  side = RECT_SIDE_MIN + (RECT_SIDE_MAX - RECT_SIDE_MIN) * rect[:, :2]
  extent = jnp.array([h, w], jnp.float32)
  sides = jnp.clip(jnp.round(side * extent), 1.0, extent)  # (R, 2) pixels.
  corner = jnp.floor(rect[:, 2:] * (extent - sides + 1.0))  # Rectangle inside the image.
  rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  inside = ((rows >= corner[:, 0, None, None]) & (rows < (corner + sides)[:, 0, None, None]) &
            (cols >= corner[:, 1, None, None]) & (cols < (corner + sides)[:, 1, None, None]))
  used = jnp.arange(RECT_MAX_COUNT) < count
  return jnp.any(inside & used[:, None, None], axis=0)[..., None].astype(jnp.float32)
