"""The layers DRAEM's networks are built from (DRAEM_SPEC section 1), NHWC throughout.

* `ConvBNReLU`: 3x3 conv (padding 1, with bias) -> BatchNorm -> ReLU;
* `Block`: two `ConvBNReLU`;
* `UpConvBNReLU`: bilinear x2 upsampling with align_corners=True semantics -> `ConvBNReLU`;
* `_max_pool`: 2x2 max-pool, stride 2;
* `SSPCAB`: the self-supervised predictive block that `model.sspcab` puts in place of the
  reconstructive encoder's last block.

Initialisation follows the reference: conv kernels ~ N(0, 0.02), conv biases PyTorch's default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm scale ~ N(1, 0.02), BatchNorm bias 0. BatchNorm
uses PyTorch's defaults (momentum 0.1 == Flax momentum 0.9, eps 1e-5). BatchNorm's training
statistics, the max-pool and the upsampling have custom VJPs written for XLA:CPU's sake (each
docstring says why).

`impl` (config `model.layer_impl`) chooses how those three layers are computed, with the same
variables and the same numbers up to float rounding:
  * "custom": the hand-written versions with custom VJPs above (`batch_norm_train`,
    `_max_pool`, `upsample2x_align_corners`);
  * "plain": plain Flax / jax.numpy formulations differentiated by autodiff
    (`batch_norm_train_plain`, `_max_pool_plain`, `upsample2x_align_corners_plain`), which
    leave XLA's GPU/TPU compilers free to fuse them with their neighbours;
  * "auto": `resolve_layer_impl` picks per platform.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from draem_jax.errors import ConfigError

Dtype = Any

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
_BN_EPSILON = 1e-5
LAYER_IMPLS = ("custom", "plain", "auto")


def resolve_layer_impl(impl: str, platform: str | None = None) -> str:
  """"custom" or "plain" for config `model.layer_impl`; "auto" decides by platform.

  "auto" is "custom" on CPU, where the custom VJPs were written and measured (their docstrings:
  BatchNorm fwd+bwd 3x faster, the upsampling's gradient 13x, the max-pool without XLA:CPU's
  index arrays), and "plain" on every other platform. That second half is a default, not a
  measurement: no GPU or TPU timing of the two has been recorded yet (`bench/gpu_suite.py`
  times both); change it here once one says otherwise.

  Args:
    impl: "custom", "plain" or "auto".
    platform: "cpu", "gpu", "tpu", ... (default: `jax.default_backend()`).
  """
  if impl not in LAYER_IMPLS:
    raise ConfigError(f"model.layer_impl={impl!r} must be one of {LAYER_IMPLS}.")
  if impl != "auto":
    return impl
  return "custom" if (platform or jax.default_backend()) == "cpu" else "plain"


def conv_kernel_init(key, shape, dtype=jnp.float32):
  """Conv kernels ~ N(0, 0.02) as in the reference's `weights_init`."""
  return 0.02 * jax.random.normal(key, shape, dtype)


def torch_conv_bias_init(fan_in: int):
  """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def bn_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm scale ~ N(1, 0.02) as in the reference's `weights_init`."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Linear interpolation matrix of shape (n_out, n_in) with align_corners=True semantics.

  Output position i samples input coordinate i * (n_in - 1) / (n_out - 1), so the first and
  last pixels map exactly onto the first and last input pixels.
  """
  if n_in == 1 or n_out == 1:
    m = np.zeros((n_out, n_in), np.float64)
    m[:, 0] = 1.0
    return m
  pos = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m  # float64; callers cast to the activation dtype (float64 runs stay exact).


def _sparse_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row-wise nonzeros of an (n_out, n_in) matrix as T tap arrays (indices, weights).

  Returns:
    (indices (T, n_out) int32, weights (T, n_out) float64), T the most nonzeros in a row;
    missing taps point at index 0 with weight 0.
  """
  taps = max(1, int((matrix != 0).sum(axis=1).max()))
  indices = np.zeros((taps, matrix.shape[0]), np.int32)
  weights = np.zeros((taps, matrix.shape[0]), np.float64)
  for i, row in enumerate(matrix):
    nz = np.flatnonzero(row)
    indices[:len(nz), i], weights[:len(nz), i] = nz, row[nz]
  return indices, weights


def _apply_taps(x: jax.Array, axis: int, matrix: np.ndarray) -> jax.Array:
  """`matrix` (n_out, n_in) applied along `axis` of x as a weighted sum of T gathers."""
  indices, weights = _sparse_taps(matrix)
  shape = [1] * x.ndim
  shape[axis] = matrix.shape[0]
  out = None
  for idx, w in zip(indices, weights):
    term = jnp.take(x, idx, axis=axis, mode="clip") * jnp.asarray(w, x.dtype).reshape(shape)
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _upsample2x_axis(x: jax.Array, axis: int) -> jax.Array:
  """Linear x2 interpolation (align_corners=True) along one axis, as 2-tap gathers."""
  n = x.shape[axis]
  return _apply_taps(x, axis, align_corners_matrix(n, 2 * n))


def _upsample2x_axis_fwd(x, axis):
  return _upsample2x_axis(x, axis), x.shape[axis]


def _upsample2x_axis_bwd(axis, n, dy):
  # The transpose of the interpolation: every input gathers its (at most 4) outputs. Autodiff
  # of the forward gather would emit a scatter-add, which XLA:CPU runs serially.
  return (_apply_taps(dy, axis, align_corners_matrix(n, 2 * n).T),)


_upsample2x_axis.defvjp(_upsample2x_axis_fwd, _upsample2x_axis_bwd)


def upsample2x_align_corners(x: jax.Array) -> jax.Array:
  """Bilinear x2 upsampling, align_corners=True (PyTorch `nn.Upsample` as DRAEM uses it).

  Separable, one axis after the other; along each, every output is a 2-tap weighted sum of
  gathered inputs (the rows of `align_corners_matrix`), and the gradient gathers back along
  the matrix's columns. Dense interpolation matrices (einsum) cost O(n) multiply-adds per
  output plus transposes of the activations: for (8, 128, 128, 64) -> 256 on a 2-core x86 the
  forward took 325 ms that way, 49 ms with gathers; the gradient 253 ms vs 19 ms.

  Args:
    x: (B, H, W, C).

  Returns:
    (B, 2H, 2W, C), same dtype as `x`.
  """
  return _upsample2x_axis(_upsample2x_axis(x, 1), 2)


def upsample2x_align_corners_plain(x: jax.Array) -> jax.Array:
  """`upsample2x_align_corners` as two dense interpolation matrix products (plain autodiff).

  Each axis is contracted with its (2n, n) `align_corners_matrix` at HIGHEST precision (no
  TF32/bfloat16 passes for float32 data: the result is the 2-tap sum up to rounding); the
  gradient is the transposed product. O(n) multiply-adds per output, which matrix units absorb
  but a CPU does not (see `upsample2x_align_corners`).

  Args:
    x: (B, H, W, C).

  Returns:
    (B, 2H, 2W, C), same dtype as `x`.
  """
  _, h, w, _ = x.shape
  mh = jnp.asarray(align_corners_matrix(h, 2 * h), x.dtype)
  mw = jnp.asarray(align_corners_matrix(w, 2 * w), x.dtype)
  highest = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=highest)
  return jnp.einsum("ow,bhwc->bhoc", mw, x, precision=highest)


def channel_sum(x: jax.Array) -> jax.Array:
  """Sum over every axis but the last: (..., W, C) -> (C,).

  Written as a reduction over the rows of a (rows, W*C) matrix followed by a small (W, C) one:
  XLA:CPU turns `jnp.sum(x, axis=(0, 1, 2))` into a two-stage reduce-window that runs at a
  third to a quarter of memory speed, while the row reduction with a long contiguous minor
  axis is vectorised (4.3 ms vs 1.1 ms for a (8, 128, 128, 32) float32 array on a 2-core x86).
  """
  w, c = x.shape[-2:]
  return jnp.sum(jnp.sum(x.reshape(-1, w * c), axis=0).reshape(w, c), axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm over all axes but the last, with a hand-written gradient.

  `y = (x - mean) * scale / sqrt(var + epsilon) + bias` with the batch mean and the biased
  batch variance E[x^2] - E[x]^2 (as Flax's `nn.BatchNorm`), computed in at least float32.
  The gradient is the textbook one, `dx = scale r / n (n dy - sum(dy) - xhat sum(dy xhat))`:
  two channel sums and one elementwise pass, where autodiff of the forward formula emits
  three reductions and several elementwise passes (fwd+bwd with a ReLU: 12 ms vs 37 ms with
  `nn.BatchNorm` for a (8, 128, 128, 32) float32 input on a 2-core x86).

  Args:
    x: (..., C) activations.
    scale, bias: (C,) affine parameters.
    epsilon: added to the variance.

  Returns:
    (y with x's shape and dtype, batch mean (C,), batch variance (C,)). The statistics are
    meant for the running averages only: no gradient flows back through them.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  n = x.size // x.shape[-1]
  xf = x.astype(compute)
  # One pass for both sums (E[x^2] - E[x]^2, as Flax's fast variance), on data shifted by
  # one sample per channel: conv outputs often have |mean| >> std, and without the shift the
  # difference cancels most of float32's digits.
  shift = xf.reshape(-1, xf.shape[-1])[0]
  xs = xf - shift
  mean_s = channel_sum(xs) / n
  var = jnp.maximum(channel_sum(xs * xs) / n - mean_s * mean_s, 0.0)
  mean = shift + mean_s
  r = jax.lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (scale.astype(compute) * r) + bias.astype(compute)).astype(x.dtype)
  return (y, mean, var), (x, mean, r, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, r, scale = residuals
  dy = cotangents[0]  # The statistics' cotangents are zero: they only feed running averages.
  compute = mean.dtype
  n = x.size // x.shape[-1]
  x_hat = (x.astype(compute) - mean) * r
  dyf = dy.astype(compute)
  dbias = channel_sum(dyf)
  dscale = channel_sum(dyf * x_hat)
  dx = (scale.astype(compute) * r / n) * (n * dyf - dbias - x_hat * dscale)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def batch_norm_train_plain(x: jax.Array, scale: jax.Array, bias: jax.Array,
                           epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`batch_norm_train` written plainly: two-pass statistics, gradient by autodiff.

  Same arguments, results and dtypes (statistics in at least float32); the variance is
  E[(x - mean)^2], equal to the custom one-pass formula up to float rounding.
  """
  compute = jnp.promote_types(x.dtype, jnp.float32)
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(compute)
  mean = jnp.mean(xf, axis=axes)
  centred = xf - mean
  var = jnp.mean(centred * centred, axis=axes)
  r = jax.lax.rsqrt(var + epsilon)
  y = (centred * (scale.astype(compute) * r) + bias.astype(compute)).astype(x.dtype)
  return y, mean, var


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with PyTorch's defaults (momentum 0.1, eps 1e-5).

  Same variables and initialisers as `nn.BatchNorm(momentum=0.9, epsilon=1e-5,
  scale_init=bn_scale_init)` (params 'scale', 'bias'; batch_stats 'mean', 'var'), with two
  differences: the running variance averages the unbiased batch variance, as PyTorch does;
  training mode runs `batch_norm_train`, whose reductions and gradient XLA:CPU executes about
  three times faster.
  """

  use_running_average: bool
  momentum: float = _BN_MOMENTUM
  epsilon: float = _BN_EPSILON
  dtype: Dtype = jnp.float32
  impl: str = "custom"  # "custom" (batch_norm_train) or "plain" (batch_norm_train_plain).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", bn_scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x = x.astype(self.dtype)
    compute = jnp.promote_types(self.dtype, jnp.float32)
    if self.use_running_average:
      k = scale.astype(compute) * jax.lax.rsqrt(ra_var.value.astype(compute) + self.epsilon)
      shift = bias.astype(compute) - ra_mean.value.astype(compute) * k
      return (x.astype(compute) * k + shift).astype(self.dtype)
    train_fn = batch_norm_train if self.impl == "custom" else batch_norm_train_plain
    y, mean, var = train_fn(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
      # Cast back: float64 activations must not turn the float32 statistics into float64
      # (a state whose dtypes change retraces the jitted step).
      ra_mean.value = (self.momentum * ra_mean.value
                       + (1.0 - self.momentum) * mean).astype(ra_mean.value.dtype)
      # The running variance averages the UNBIASED batch variance, as PyTorch's BatchNorm2d
      # (nn.BatchNorm would average the biased one); normalisation uses the biased one.
      n = x.size // features
      unbiased = var * (n / max(n - 1, 1))
      ra_var.value = (self.momentum * ra_var.value
                      + (1.0 - self.momentum) * unbiased).astype(ra_var.value.dtype)
    return y


class ConvBNReLU(nn.Module):
  """3x3 conv (padding 1, bias) -> BatchNorm -> ReLU."""

  features: int
  dtype: Dtype = jnp.float32
  impl: str = "custom"  # BatchNorm's layer_impl.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    fan_in = x.shape[-1] * 9
    x = nn.Conv(self.features, (3, 3), padding=1, use_bias=True, dtype=self.dtype,
                kernel_init=conv_kernel_init, bias_init=torch_conv_bias_init(fan_in),
                name="conv")(x)
    x = BatchNorm(use_running_average=not train, dtype=self.dtype, impl=self.impl,
                  name="bn")(x)
    return nn.relu(x)


class Block(nn.Module):
  """Two `ConvBNReLU`: in -> mid -> out channels (mid defaults to out)."""

  features: int
  mid_features: int | None = None
  dtype: Dtype = jnp.float32
  impl: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(self.mid_features or self.features, self.dtype, self.impl,
                   name="cbr1")(x, train)
    return ConvBNReLU(self.features, self.dtype, self.impl, name="cbr2")(x, train)


class UpConvBNReLU(nn.Module):
  """Bilinear x2 (align_corners=True) -> `ConvBNReLU`."""

  features: int
  dtype: Dtype = jnp.float32
  impl: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return ConvBNReLU(self.features, self.dtype, self.impl, name="cbr")(upsample(x, self.impl),
                                                                         train)


class SSPCAB(nn.Module):
  """Self-supervised predictive convolutional attentive block (Ristea et al., CVPR 2022).

  (B, H, W, C) -> (B, H, W, C). A masked convolution: four k x k convolutions C -> C (with
  bias) read the four corners at distance k + dilation of each pixel's (2k + 2d + 1)-wide
  receptive field, whose centre they never see; their sum goes through a squeeze-and-excitation
  attention (global mean, Dense C -> C // reduction, ReLU, Dense -> C, sigmoid, times the
  input). The same structure and parameter count as anomalib's `SSPCAB` (4 (k^2 C^2 + C) +
  2 C^2 / r + C / r + C); kernels and biases are initialised as the convolutions here are.
  The block itself is trained by `sspcab_loss`, the mean squared error between its input
  and output, which the block sows into the "losses" collection under the name "sspcab".
  """

  features: int
  kernel_size: int = 1
  dilation: int = 1
  reduction: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, d = self.kernel_size, self.dilation
    pad, crop = k + d, k + 2 * d + 1
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows, cols = h + 2 * pad - crop, w + 2 * pad - crop  # Each corner's window; k-valid = H.
    out = None
    for i, (top, left) in enumerate(((0, 0), (0, crop), (crop, 0), (crop, crop))):
      conv = nn.Conv(self.features, (k, k), padding="VALID", use_bias=True, dtype=self.dtype,
                     kernel_init=conv_kernel_init,
                     bias_init=torch_conv_bias_init(k * k * x.shape[-1]),
                     name=f"masked_conv{i + 1}")
      y = conv(padded[:, top:top + rows, left:left + cols])
      out = y if out is None else out + y
    squeezed = jnp.mean(out.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    hidden = self.features // self.reduction
    act = nn.relu(nn.Dense(hidden, dtype=self.dtype, kernel_init=conv_kernel_init,
                           bias_init=torch_conv_bias_init(self.features), name="fc1")(squeezed))
    act = nn.sigmoid(nn.Dense(self.features, dtype=self.dtype, kernel_init=conv_kernel_init,
                              bias_init=torch_conv_bias_init(hidden), name="fc2")(act))
    y = out * act[:, None, None, :]
    self.sow("losses", "sspcab", sspcab_loss(x, y))
    return y


def sspcab_loss(block_input: jax.Array, block_output: jax.Array) -> jax.Array:
  """Mean squared error between SSPCAB's input and output, in float32 (a scalar)."""
  diff = block_output.astype(jnp.float32) - block_input.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def _final_conv(features: int, fan_in: int, dtype: Dtype) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=1, use_bias=True, dtype=dtype,
                 kernel_init=conv_kernel_init, bias_init=torch_conv_bias_init(fan_in),
                 name="final")


def _output_dtype(dtype: Dtype) -> Dtype:
  """At least float32 (bfloat16 activations give float32 outputs; float64 stays float64)."""
  return jnp.promote_types(dtype, jnp.float32)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 on (B, H, W, C), H and W even; gradient to the FIRST maximum.

  The four taps of each window are compared once in the forward pass and the three outcomes
  kept (as booleans) for the backward pass, which routes each output gradient to exactly one
  input, the first maximum in row-major order as PyTorch's `max_pool2d` does. Why not
  `nn.max_pool`: its gradient runs on XLA:CPU with four int32 index arrays per pooled element.
  Why not the gradient of `jnp.max`: it finds the maximum again by testing equality with the
  pooled value, and when XLA recomputes the pooled input in two fusions with different
  rounding no element is equal, which gives 0/0 = NaN.
  """
  return _max_pool_fwd(x)[0]


def _max_pool_taps(x):
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x[:, :, 0, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 0], x[:, :, 1, :, 1]


def _max_pool_fwd(x):
  top_left, top_right, bottom_left, bottom_right = _max_pool_taps(x)
  right_in_top = top_right > top_left  # Strict: ties go to the earlier tap.
  top = jnp.maximum(top_left, top_right)
  right_in_bottom = bottom_right > bottom_left
  bottom = jnp.maximum(bottom_left, bottom_right)
  from_bottom = bottom > top
  return jnp.maximum(top, bottom), (right_in_top, right_in_bottom, from_bottom)


def _max_pool_bwd(residuals, dy):
  right_in_top, right_in_bottom, from_bottom = residuals
  zero = jnp.zeros_like(dy)
  top, bottom = jnp.where(from_bottom, zero, dy), jnp.where(from_bottom, dy, zero)
  taps = [[jnp.where(right_in_top, zero, top), jnp.where(right_in_top, top, zero)],
          [jnp.where(right_in_bottom, zero, bottom), jnp.where(right_in_bottom, bottom, zero)]]
  # (B, H/2, 2, W/2, 2, C) -> (B, H, W, C).
  g = jnp.stack([jnp.stack(row, axis=3) for row in taps], axis=2)
  b, h2, _, w2, _, c = g.shape
  return (g.reshape(b, 2 * h2, 2 * w2, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2; odd trailing rows/columns are dropped, as VALID pooling does."""
  _, h, w, _ = x.shape
  return max_pool_2x2(x[:, :h // 2 * 2, :w // 2 * 2])


def _max_pool_plain(x: jax.Array) -> jax.Array:
  """`_max_pool` as Flax's `nn.max_pool` (reduce_window; autodiff's select-and-scatter)."""
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


# The functions are looked up in this module's globals at call time, so that
# `draem_jax.deployment.onnx_ops` can replace them while jax2onnx traces.
def max_pool(x: jax.Array, impl: str = "custom") -> jax.Array:
  """2x2 max-pool, stride 2, by `impl` ("custom": `_max_pool`, "plain": `_max_pool_plain`)."""
  return _max_pool(x) if impl == "custom" else _max_pool_plain(x)


def upsample(x: jax.Array, impl: str = "custom") -> jax.Array:
  """x2 align-corners upsampling by `impl` ("custom" or "plain")."""
  return upsample2x_align_corners(x) if impl == "custom" else upsample2x_align_corners_plain(x)
