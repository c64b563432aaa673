"""DRAEM's two sub-networks as Flax linen modules (DRAEM_SPEC section 1).

Layout is NHWC throughout. Both networks are built from the same pieces:

* `ConvBNReLU`: 3x3 conv (padding 1, with bias) -> BatchNorm -> ReLU;
* `Block`: two `ConvBNReLU`;
* `UpConvBNReLU`: bilinear x2 upsampling with align_corners=True semantics -> `ConvBNReLU`.

Initialisation follows the reference: conv kernels ~ N(0, 0.02), conv biases PyTorch's default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm scale ~ N(1, 0.02), BatchNorm bias 0. BatchNorm
uses PyTorch's defaults (momentum 0.1 == Flax momentum 0.9, eps 1e-5).

Mixed precision: `dtype` is the activation/computation dtype (e.g. bfloat16); parameters are
always float32 and Flax computes BatchNorm statistics in at least float32. The networks return
their outputs in at least float32 so that losses are computed in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from draem_jax.errors import ConfigError

Dtype = Any

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
_BN_EPSILON = 1e-5


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


def upsample2x_align_corners(x: jax.Array) -> jax.Array:
  """Bilinear x2 upsampling, align_corners=True (PyTorch `nn.Upsample` as DRAEM uses it).

  Separable: two small dense interpolation matrices applied along H and W. Matmuls (rather than
  a gather) keep the backward pass a matmul too.

  Args:
    x: (B, H, W, C).

  Returns:
    (B, 2H, 2W, C), same dtype as `x`.
  """
  _, h, w, _ = x.shape
  mh = jnp.asarray(align_corners_matrix(h, 2 * h), x.dtype)
  mw = jnp.asarray(align_corners_matrix(w, 2 * w), x.dtype)
  x = jnp.einsum("oh,bhwc->bowc", mh, x)
  return jnp.einsum("pw,bowc->bopc", mw, x)


class ConvBNReLU(nn.Module):
  """3x3 conv (padding 1, bias) -> BatchNorm -> ReLU."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    fan_in = x.shape[-1] * 9
    x = nn.Conv(self.features, (3, 3), padding=1, use_bias=True, dtype=self.dtype,
                kernel_init=conv_kernel_init, bias_init=torch_conv_bias_init(fan_in),
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                     epsilon=_BN_EPSILON, dtype=self.dtype, scale_init=bn_scale_init,
                     name="bn")(x)
    return nn.relu(x)


class Block(nn.Module):
  """Two `ConvBNReLU`: in -> mid -> out channels (mid defaults to out)."""

  features: int
  mid_features: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU(self.mid_features or self.features, self.dtype, name="cbr1")(x, train)
    return ConvBNReLU(self.features, self.dtype, name="cbr2")(x, train)


class UpConvBNReLU(nn.Module):
  """Bilinear x2 (align_corners=True) -> `ConvBNReLU`."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return ConvBNReLU(self.features, self.dtype, name="cbr")(upsample2x_align_corners(x), train)


def _final_conv(features: int, fan_in: int, dtype: Dtype) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=1, use_bias=True, dtype=dtype,
                 kernel_init=conv_kernel_init, bias_init=torch_conv_bias_init(fan_in),
                 name="final")


def _output_dtype(dtype: Dtype) -> Dtype:
  """At least float32 (bfloat16 activations give float32 outputs; float64 stays float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def _max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2 (odd trailing rows/columns dropped, as VALID pooling does).

  A reshape and a max rather than `nn.max_pool`: the gradient of `reduce_window` is a
  select-and-scatter that XLA:CPU runs with four int32 index arrays per pooled element;
  the gradient of `max` is an elementwise mask. (Exact ties split the gradient instead of
  picking the first maximum; after a ReLU ties are zeros, whose gradient the ReLU drops.)
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ReconstructiveSubNetwork(nn.Module):
  """Encoder-decoder without skips: (B, H, W, 3) -> reconstruction (B, H, W, out_channels).

  H and W must be multiples of 16. At base width 128 it has 69,048,579 parameters.
  """

  width: int = 128
  out_channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, dt = self.width, self.dtype
    x = x.astype(dt)
    # Encoder: four pooled blocks and a bottleneck block (16x16 at 256 input).
    for i, mult in enumerate((1, 2, 4, 8)):
      x = Block(mult * w, dtype=dt, name=f"enc_block{i + 1}")(x, train)
      x = _max_pool(x)
    x = Block(8 * w, dtype=dt, name="enc_block5")(x, train)
    # Decoder: up+conv(c->c), conv(c->c), conv(c->c').
    for i, (c, c_out) in enumerate(((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w))):
      x = UpConvBNReLU(c, dtype=dt, name=f"dec_up{i + 1}")(x, train)
      x = Block(c_out, mid_features=c, dtype=dt, name=f"dec_block{i + 1}")(x, train)
    x = _final_conv(self.out_channels, 9 * w, dt)(x)
    return x.astype(_output_dtype(dt))


class DiscriminativeSubNetwork(nn.Module):
  """U-Net: (B, H, W, 6) -> logits (B, H, W, 2) for (normal, anomalous).

  H and W must be multiples of 32 (five poolings). At base width 64 it has 28,374,146
  parameters.
  """

  width: int = 64
  out_channels: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, dt = self.width, self.dtype
    x = x.astype(dt)
    skips = []
    for i, mult in enumerate((1, 2, 4, 8, 8)):
      x = Block(mult * b, dtype=dt, name=f"enc_block{i + 1}")(x, train)
      skips.append(x)
      x = _max_pool(x)
    x = Block(8 * b, dtype=dt, name="enc_block6")(x, train)  # 8x8 at 256 input.
    # Decoder: up+conv, then concat(upsampled, encoder feature) -> block.
    for i, mult in enumerate((8, 4, 2, 1, 1)):
      x = UpConvBNReLU(mult * b, dtype=dt, name=f"dec_up{i + 1}")(x, train)
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = Block(mult * b, dtype=dt, name=f"dec_block{i + 1}")(x, train)
    x = _final_conv(self.out_channels, 9 * b, dt)(x)
    return x.astype(_output_dtype(dt))


class DRAEM(nn.Module):
  """Both sub-networks wired as in the reference.

  `rec = R(x)`; `logits = D(concat([rec, x]))` with the reconstruction FIRST. The
  reconstruction is not detached: the segmentation loss also trains R.
  """

  recon_width: int = 128
  disc_width: int = 64
  dtype: Dtype = jnp.float32

  def setup(self):
    self.reconstructive = ReconstructiveSubNetwork(self.recon_width, 3, self.dtype)
    self.discriminative = DiscriminativeSubNetwork(self.disc_width, 2, self.dtype)

  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Args: x (B, H, W, 3) in [0, 1]. Returns (reconstruction (B, H, W, 3),
    logits (B, H, W, 2)), both float32."""
    rec = self.reconstructive(x, train)
    logits = self.discriminative(jnp.concatenate([rec, x.astype(rec.dtype)], axis=-1), train)
    return rec, logits


def init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises `model`'s variables as `model.init` would, with two bulk random draws.

  Same distributions as the modules' initialisers (conv kernels N(0, 0.02), conv biases
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm scale N(1, 0.02), BatchNorm bias 0, running
  mean 0 and variance 1), but one normal and one uniform draw for the whole network instead of
  one per tensor. XLA on CPU compiles a hundred separate random draws in tens of seconds; two
  compile in about one. Works for any module built from this file's layers.

  Args:
    model: a module of this file.
    key: PRNG key.
    input_shape: (B, H, W, C) of an example input.

  Returns:
    {'params': ..., 'batch_stats': ...} with the structure of `model.init`.
  """
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  names = [tuple(getattr(k, "key", str(k)) for k in path) for path, _ in leaves]
  kernel_fan_in = {name[:-1]: int(np.prod(leaf.shape[:-1]))
                   for name, (_, leaf) in zip(names, leaves) if name[-1] == "kernel"}

  def kind(name):
    if name[0] == "batch_stats":
      return name[-1]  # "mean" -> 0, "var" -> 1.
    layer_is_bn = name[-2] == "bn"
    return {("kernel", False): "normal", ("bias", False): "uniform",
            ("scale", True): "normal", ("bias", True): "zeros"}[(name[-1], layer_is_bn)]

  kinds = [kind(n) for n in names]
  sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
  key_n, key_u = jax.random.split(key)
  normal = jax.random.normal(key_n, (sum(s for s, k in zip(sizes, kinds) if k == "normal"),))
  uniform = jax.random.uniform(
      key_u, (sum(s for s, k in zip(sizes, kinds) if k == "uniform"),), minval=-1.0, maxval=1.0)
  out, offsets = [], {"normal": 0, "uniform": 0}
  for name, (_, leaf), k, size in zip(names, leaves, kinds, sizes):
    if k in ("normal", "uniform"):
      flat = (normal if k == "normal" else uniform)[offsets[k]:offsets[k] + size]
      offsets[k] += size
      if k == "uniform":  # Conv bias: U(-1, 1) scaled by 1/sqrt(fan_in).
        value = flat / np.sqrt(kernel_fan_in[name[:-1]])
      else:  # Conv kernel N(0, 0.02) or BatchNorm scale N(1, 0.02).
        value = 0.02 * flat + (1.0 if name[-1] == "scale" else 0.0)
      out.append(value.reshape(leaf.shape).astype(leaf.dtype))
    else:
      out.append(jnp.full(leaf.shape, 1.0 if k == "var" else 0.0, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def create_model(model_config) -> DRAEM:
  """Builds `DRAEM` from config.model (recon_width, disc_width, dtype)."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise ConfigError(
        f"model.dtype={model_config.dtype!r} is not supported; use 'float32' or 'bfloat16'.")
  for field in ("recon_width", "disc_width"):
    if int(getattr(model_config, field)) <= 0:
        raise ConfigError(f"model.{field} must be a positive integer, got "
                        f"{getattr(model_config, field)!r}.")
  return DRAEM(int(model_config.recon_width), int(model_config.disc_width),
               dtypes[model_config.dtype])


def count_params(params) -> int:
  """Total number of parameter entries in a pytree (works on ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def predict(model: DRAEM, variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Inference: reconstruction and the pixel anomaly map (BatchNorm running statistics).

  Args:
    model: the `DRAEM` module.
    variables: {'params', 'batch_stats'}.
    images: (B, H, W, 3) in [0, 1].

  Returns:
    (reconstruction (B, H, W, 3), anomaly map (B, H, W) = softmax(logits)[..., 1]), float32.
  """
  rec, logits = model.apply(variables, images, train=False)
  return rec, jax.nn.softmax(logits, axis=-1)[..., 1]
