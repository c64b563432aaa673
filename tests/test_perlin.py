"""Perlin noise against independent numpy / pure-Python implementations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draem_jax.simulation import perlin


def _tiled_reference(gradients, res, shape):
  """The DRAEM reference's algorithm (tiled gradients); needs shape divisible by res."""
  def fade(t):
    return 6 * t**5 - 15 * t**4 + 10 * t**3

  d = (shape[0] // res[0], shape[1] // res[1])
  grid = np.mgrid[0:res[0]:res[0] / shape[0], 0:res[1]:res[1] / shape[1]].transpose(1, 2, 0) % 1
  g = gradients[:res[0] + 1, :res[1] + 1]

  def tile(rows, cols):
    return np.repeat(np.repeat(g[rows[0]:rows[1], cols[0]:cols[1]], d[0], 0), d[1], 1)

  def dot(grad, shift):
    return ((grid[..., 0] + shift[0]) * grad[..., 0] + (grid[..., 1] + shift[1]) * grad[..., 1])

  n00 = dot(tile([0, -1], [0, -1]), [0, 0])
  n10 = dot(tile([1, None], [0, -1]), [-1, 0])
  n01 = dot(tile([0, -1], [1, None]), [0, -1])
  n11 = dot(tile([1, None], [1, None]), [-1, -1])
  t = fade(grid)

  def lerp(a, b, w):
    return a + w * (b - a)

  return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


def _pointwise_reference(gradients, res, shape):
  """Plain per-pixel Perlin noise at u = i * sx / H, v = j * sy / W (any shape)."""
  def fade(t):
    return 6 * t**5 - 15 * t**4 + 10 * t**3

  out = np.zeros(shape)
  for i in range(shape[0]):
    for j in range(shape[1]):
      u, v = i * res[0] / shape[0], j * res[1] / shape[1]
      cu, cv = math.floor(u), math.floor(v)
      fu, fv = u - cu, v - cv
      corner = {}
      for a in (0, 1):
        for b in (0, 1):
          gx, gy = gradients[cu + a, cv + b]
          corner[a, b] = gx * (fu - a) + gy * (fv - b)
      tu, tv = fade(fu), fade(fv)
      n0 = corner[0, 0] + tu * (corner[1, 0] - corner[0, 0])
      n1 = corner[0, 1] + tu * (corner[1, 1] - corner[0, 1])
      out[i, j] = math.sqrt(2) * (n0 + tv * (n1 - n0))
  return out


def _unit_gradients(seed, size=33):
  angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, (size, size))
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


_noise = jax.jit(perlin.perlin_noise, static_argnums=2)


@pytest.mark.parametrize("res,shape", [((1, 1), (64, 64)), ((2, 32), (64, 96)),
                                       ((32, 4), (256, 64)), ((8, 16), (32, 32))])
def test_matches_tiled_reference(res, shape):
  gradients = _unit_gradients(sum(res))
  expected = _tiled_reference(gradients, res, shape)
  got = np.asarray(_noise(jnp.asarray(gradients, jnp.float32), jnp.array(res), shape))
  np.testing.assert_allclose(got, expected, atol=2e-6)


def test_sizes_not_multiple_of_resolution_match_pointwise_reference():
  gradients = _unit_gradients(7)
  for res, shape in (((4, 8), (50, 70)), ((32, 2), (45, 33)), ((3, 5), (20, 21))):
    expected = _pointwise_reference(gradients, res, shape)
    got = np.asarray(_noise(jnp.asarray(gradients, jnp.float32), jnp.array(res), shape))
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_batched_resolutions():
  gradients = np.stack([_unit_gradients(s) for s in range(3)])
  res = np.array([[1, 2], [16, 4], [32, 32]])
  got = np.asarray(_noise(jnp.asarray(gradients, jnp.float32), jnp.asarray(res), (64, 64)))
  for b in range(3):
    np.testing.assert_allclose(got[b], _tiled_reference(gradients[b], res[b], (64, 64)),
                               atol=2e-6)


def test_continuous_bounded_and_zero_on_the_lattice():
  size = 256
  for log2 in range(6):
    res = 2**log2
    for seed in range(3):
      key = jax.random.key(100 * log2 + seed)
      gradients = perlin.random_gradients(key, 32)
      noise = np.asarray(_noise(gradients, jnp.array([res, res]), (size, size)))
      # Unit gradients and sqrt(2) scaling bound the noise by 1.
      assert np.abs(noise).max() <= 1.0 + 1e-5
      # Lipschitz: |dn/du| <= 4 per lattice unit (2.9 is the largest seen over 150 fields; a
      # wrong gradient at a cell boundary makes jumps of order 0.5 at any pixel pitch).
      step = res / size
      assert np.abs(np.diff(noise, axis=0)).max() <= 4 * step
      assert np.abs(np.diff(noise, axis=1)).max() <= 4 * step
      # Perlin noise vanishes at lattice points.
      pitch = size // res
      np.testing.assert_allclose(noise[::pitch, ::pitch], 0.0, atol=1e-6)


def test_random_draws():
  keys = jax.random.split(jax.random.key(0), 3000)
  log2 = np.asarray(jax.vmap(lambda k: perlin.random_log2_res(k, 0, 5))(keys))
  assert set(np.unique(log2)) == set(range(6))
  gradients = np.asarray(perlin.random_gradients(jax.random.key(1), 32))
  assert gradients.shape == (33, 33, 2)
  np.testing.assert_allclose(np.linalg.norm(gradients, axis=-1), 1.0, atol=1e-6)
  angles = np.arctan2(gradients[..., 1], gradients[..., 0]) % (2 * np.pi)
  # 1089 uniform angles: each quadrant holds 1/4 of them (4.5 sigma = 0.059).
  counts = np.histogram(angles, bins=4, range=(0, 2 * np.pi))[0] / angles.size
  np.testing.assert_allclose(counts, 0.25, atol=0.059)
