"""DRAEM's training losses (DRAEM_SPEC section 2): `l2 + (1 - SSIM) + focal`, all weights 1.

Pure functions on NHWC float32 arrays. They follow the reference implementation's numbers
exactly, including its choices that differ from textbook definitions (SSIM's zero padding and
data range taken from the reconstruction; the focal loss's smoothing).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5


def _wide(x: jax.Array) -> jax.Array:
  """At least float32: losses are never computed in bfloat16 (float64 stays float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over every element (PyTorch `nn.MSELoss()`)."""
  return jnp.mean(jnp.square(_wide(prediction) - _wide(target)))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian of `size` taps centred on size // 2."""
  x = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return g / g.sum()


def _blur_matrix(n: int, window: np.ndarray) -> np.ndarray:
  """(n, n) banded matrix that convolves a length-n signal with `window`, zero padded.

  Row i holds window[j - i + r] at column j, r = len(window) // 2; taps that would read the
  zero padding are simply absent, which is exactly zero padding with "same" output size.
  """
  r = len(window) // 2
  m = np.zeros((n, n), np.float64)
  for i in range(n):
    lo, hi = max(0, i - r), min(n, i + r + 1)
    m[i, lo:hi] = window[lo - i + r:hi - i + r]
  return m  # float64; cast to the data's dtype by the caller.


def _gaussian_blur(x: jax.Array) -> jax.Array:
  """Per-channel 11x11 Gaussian (sigma 1.5) with zero padding 5, output the size of x.

  The 2-D window is the outer product of the 1-D one, so the blur is separable; as two banded
  matmuls it costs little and runs on every backend without grouped convolutions.
  """
  _, h, w, _ = x.shape
  g = gaussian_window()
  bh = jnp.asarray(_blur_matrix(h, g), x.dtype)
  bw = jnp.asarray(_blur_matrix(w, g), x.dtype)
  hi = jax.lax.Precision.HIGHEST  # The blur feeds variances: keep it exact on TPU/GPU too.
  x = jnp.einsum("ih,bhwc->biwc", bh, x, precision=hi)
  return jnp.einsum("jw,biwc->bijc", bw, x, precision=hi)


def ssim_data_range(reconstruction: jax.Array) -> jax.Array:
  """The reference's data range L, taken from the reconstruction (first SSIM argument).

  max_val = 255 if max > 128 else 1; min_val = -1 if min < -0.5 else 0; L = max_val - min_val.
  """
  max_val = jnp.where(jnp.max(reconstruction) > 128, 255.0, 1.0)
  min_val = jnp.where(jnp.min(reconstruction) < -0.5, -1.0, 0.0)
  return max_val - min_val


def ssim_map(reconstruction: jax.Array, target: jax.Array,
             data_range: jax.Array | float | None = None) -> jax.Array:
  """Per-pixel, per-channel SSIM map (B, H, W, C) with zero-padded Gaussian statistics.

  Args:
    reconstruction: (B, H, W, C); the data range is taken from it when `data_range` is None.
    target: (B, H, W, C).
    data_range: L for C1 = (0.01 L)^2 and C2 = (0.03 L)^2.

  Returns:
    (B, H, W, C) float32 SSIM values.
  """
  x, y = _wide(reconstruction), _wide(target)
  if data_range is None:
    data_range = ssim_data_range(x)
  c1 = (0.01 * data_range)**2
  c2 = (0.03 * data_range)**2
  # One blur over the five stacked statistics' inputs.
  stats = _gaussian_blur(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1))
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=-1)
  var_x = e_xx - mu_x * mu_x
  var_y = e_yy - mu_y * mu_y
  cov = e_xy - mu_x * mu_y
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  return num / den


def ssim(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean SSIM over batch, channels and pixels (the reference's `ssim(img1=rec, img2=target)`)."""
  return jnp.mean(ssim_map(reconstruction, target))


def focal(logits: jax.Array, mask: jax.Array, gamma: float = FOCAL_GAMMA,
          smooth: float = FOCAL_SMOOTH) -> jax.Array:
  """Focal loss on softmax probabilities, both classes weighted 1, with label smoothing.

  With p_t the softmax probability of the true class,
  `pt = p_t * (1 - 2 smooth) + 2 smooth` (the reference clamps the one-hot target to
  [smooth, 1 - smooth] and adds `smooth`), `loss = -(1 - pt)^gamma * log(pt)`, averaged over
  every pixel.

  Args:
    logits: (B, H, W, 2) logits for (normal, anomalous).
    mask: (B, H, W) or (B, H, W, 1) ground truth, 1 = anomalous.

  Returns:
    Scalar float32 loss.
  """
  probs = jax.nn.softmax(_wide(logits), axis=-1)
  mask = mask.astype(probs.dtype).reshape(probs.shape[:-1])
  p_true = mask * probs[..., 1] + (1.0 - mask) * probs[..., 0]
  pt = p_true * (1.0 - 2.0 * smooth) + 2.0 * smooth
  return jnp.mean(-jnp.power(1.0 - pt, gamma) * jnp.log(pt))


class Losses(NamedTuple):
  total: jax.Array
  l2: jax.Array
  ssim: jax.Array  # The SSIM loss term, 1 - SSIM.
  focal: jax.Array


def draem_loss(reconstruction: jax.Array, target: jax.Array, logits: jax.Array,
               mask: jax.Array) -> Losses:
  """`l2(rec, target) + (1 - SSIM(rec, target)) + focal(logits, mask)`, all float32.

  Args:
    reconstruction: (B, H, W, 3) output of the reconstructive network.
    target: (B, H, W, 3) clean image in [0, 1].
    logits: (B, H, W, 2) output of the discriminative network.
    mask: (B, H, W, 1) or (B, H, W) anomaly mask in {0, 1}.
  """
  l2_term = l2(reconstruction, target)
  ssim_term = 1.0 - ssim(reconstruction, target)
  focal_term = focal(logits, mask)
  return Losses(l2_term + ssim_term + focal_term, l2_term, ssim_term, focal_term)


def model_loss(reconstruction: jax.Array | None, target: jax.Array, logits: jax.Array | None,
               mask: jax.Array) -> Losses:
  """The loss of whichever networks a model has (`models.VARIANTS`); absent terms are 0.

  Both (DRAEM): `draem_loss`. Logits only (the discriminative network alone): the focal loss.
  Reconstruction only (the reconstructive network alone): l2 + (1 - SSIM).
  """
  if reconstruction is not None and logits is not None:
    return draem_loss(reconstruction, target, logits, mask)
  zero = jnp.zeros((), jnp.float32)
  if reconstruction is None:
    focal_term = focal(logits, mask)
    return Losses(focal_term, zero, zero, focal_term)
  l2_term = l2(reconstruction, target)
  ssim_term = 1.0 - ssim(reconstruction, target)
  return Losses(l2_term + ssim_term, l2_term, ssim_term, zero)
