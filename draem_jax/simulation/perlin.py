"""2-D Perlin noise in jax.numpy with a per-sample lattice resolution.

DRAEM draws its anomaly masks from Perlin noise whose gradient lattice has (sx, sy) =
(2^kx, 2^ky) cells along (rows, columns), kx and ky drawn per sample. Under `jit` array shapes
must be static while the resolution is a traced value, so every sample carries gradients on a
fixed (R + 1) x (R + 1) lattice, R = 2^max_log2, of which only the top-left (sx + 1) x (sy + 1)
corner is read. Each used gradient is still an independent unit vector at a uniform angle, so
the noise has the distribution of the reference sampler.

Evaluation without gathers: for pixel row i the lattice coordinate is u = i * sx / H, cell
c = floor(u), fraction f = u - c, fade t = 6f^5 - 15f^4 + 10f^3. The noise

  n(i, j) = sqrt(2) * sum_{a,b in {0,1}} w_a(i) w_b(j) [gx[c_i+a, c_j+b] (f_i - a)
                                                       + gy[c_i+a, c_j+b] (f_j - b)],
  w_0 = 1 - t, w_1 = t,

is separable, so it equals sqrt(2) * (Ax @ Gx @ Bx^T + Ay @ Gy @ By^T) with sparse (H, R+1) and
(W, R+1) interpolation matrices: two small batched matmuls instead of 8 gathers per pixel.

Any image size works, also sizes that are not multiples of the resolution (224, 100, 64x96):
the coordinate u = i * s / H is computed exactly with integers, so s cells simply span H / s
pixels each, fractional or not; nothing is generated larger and cropped. Where s divides H the
result equals the reference implementation (which requires H to be a multiple of s).
"""

import math

import jax
import jax.numpy as jnp

_SQRT2 = math.sqrt(2.0)


def fade(t: jax.Array) -> jax.Array:
  """Quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0 and 1)."""
  return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis_matrices(n: int, res: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Interpolation matrices of one image axis.

  Args:
    n: number of pixels along the axis (static).
    res: (...,) int32 lattice resolution along the axis (traced).
    size: number of lattice points stored along the axis, R + 1 (static).

  Returns:
    (ramp, weight), each (..., n, size) float32: `weight[i, r]` is the fade weight of lattice
    point r for pixel i, `ramp[i, r]` that weight times the pixel's offset from point r.
  """
  i = jnp.arange(n, dtype=jnp.int32)
  num = i * res[..., None]  # Exact integer lattice coordinate times n.
  cell = num // n
  frac = (num - cell * n).astype(jnp.float32) / n
  t = fade(frac)
  points = jnp.arange(size, dtype=jnp.int32)
  at0 = (points == cell[..., None]).astype(jnp.float32)
  at1 = (points == cell[..., None] + 1).astype(jnp.float32)
  weight = at0 * (1.0 - t)[..., None] + at1 * t[..., None]
  ramp = at0 * ((1.0 - t) * frac)[..., None] + at1 * (t * (frac - 1.0))[..., None]
  return ramp, weight


def perlin_noise(gradients: jax.Array, res: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Perlin noise from explicit gradients and resolution.

  Args:
    gradients: (..., R + 1, R + 1, 2) float gradient vectors on the lattice; component 0 pairs
      with the row axis, component 1 with the column axis (the reference's convention). Only
      `gradients[..., :sx + 1, :sy + 1, :]` is read.
    res: (..., 2) int lattice resolution (sx, sy) along (rows, columns), 1 <= s <= R.
    shape: static (H, W) of the noise.

  Returns:
    (..., H, W) float32 noise, sqrt(2) times the Perlin value, so within [-1, 1] for unit
    gradients.
  """
  height, width = shape
  size = gradients.shape[-2]
  res = jnp.asarray(res, jnp.int32)
  gradients = jnp.asarray(gradients, jnp.float32)
  row_ramp, row_weight = _axis_matrices(height, res[..., 0], gradients.shape[-3])
  col_ramp, col_weight = _axis_matrices(width, res[..., 1], size)
  hi = jax.lax.Precision.HIGHEST  # Keep float32 matmuls exact on TF32/bf16 accelerators.
  noise = (jnp.einsum("...ir,...rc,...jc->...ij", row_ramp, gradients[..., 0], col_weight,
                      precision=hi) +
           jnp.einsum("...ir,...rc,...jc->...ij", row_weight, gradients[..., 1], col_ramp,
                      precision=hi))
  return _SQRT2 * noise


def unit_gradients(u: jax.Array) -> jax.Array:
  """Unit vectors (cos, sin) at angles 2 pi u; u (...) uniform in [0, 1) -> (..., 2)."""
  angles = (2 * math.pi) * u
  return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def random_gradients(key: jax.Array, max_res: int) -> jax.Array:
  """Unit gradients at uniform angles in [0, 2 pi) on a (max_res + 1)^2 lattice.

  Args:
    key: PRNG key.
    max_res: static largest resolution R.

  Returns:
    (R + 1, R + 1, 2) float32 (cos, sin) of the angles.
  """
  return unit_gradients(jax.random.uniform(key, (max_res + 1, max_res + 1), jnp.float32))


def random_log2_res(key: jax.Array, min_log2: int, max_log2: int) -> jax.Array:
  """(kx, ky), each uniform on the integers min_log2..max_log2 inclusive; (2,) int32."""
  return jax.random.randint(key, (2,), min_log2, max_log2 + 1, jnp.int32)


def random_perlin_noise(key: jax.Array, shape: tuple[int, int], min_log2: int,
                        max_log2: int) -> tuple[jax.Array, jax.Array]:
  """One Perlin noise field with a random lattice resolution, as DRAEM draws it.

  Args:
    key: PRNG key.
    shape: static (H, W).
    min_log2, max_log2: static bounds of k in (sx, sy) = (2^kx, 2^ky).

  Returns:
    noise (H, W) float32 and log2_res (2,) int32 (kx, ky).
  """
  k_res, k_grad = jax.random.split(key)
  log2_res = random_log2_res(k_res, min_log2, max_log2)
  gradients = random_gradients(k_grad, 2**max_log2)
  return perlin_noise(gradients, jnp.left_shift(1, log2_res), shape), log2_res
