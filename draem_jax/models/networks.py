"""DRAEM's two sub-networks and their wiring as Flax linen modules (DRAEM_SPEC section 1).

Both networks are built from the layers of `draem_jax.models.layers`. Besides DRAEM, the
paper's two single-network ablations (its Table 3; `model.variant`): `DiscriminativeOnly`
(the discriminative network alone on the augmented image) and `ReconstructiveAE` (the
reconstructive network alone, its anomaly map 1 - SSIM(input, reconstruction)). Every model
returns (reconstruction or None, logits or None); `anomaly_map` turns that into the map.

Mixed precision: `dtype` is the activation/computation dtype (e.g. bfloat16); parameters are
always float32 and Flax computes BatchNorm statistics in at least float32. The networks return
their outputs in at least float32 so that losses are computed in float32.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from draem_jax.errors import ConfigError
from draem_jax.models import layers
from draem_jax.models.layers import SSPCAB, Block, UpConvBNReLU, _final_conv, _output_dtype
from draem_jax.training import losses

Dtype = Any

# XLA:CPU (jaxlib 0.10) hands convolutions and dots to YNNPACK by default. For DRAEM's 3x3
# convolutions XLA's own (Eigen) kernels are much faster on x86: forward ~2x, the kernel
# gradient 3-8x (it is a convolution whose "kernel" is a whole image); measured on a 2-core
# x86 CPU, the 128x128 train step at widths 32/16 went from 1.66x to 0.92x PyTorch's time.
# The option only exists for (and is only passed to) CPU compilations.
XLA_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}



class ReconstructiveSubNetwork(nn.Module):
  """Encoder-decoder without skips: (B, H, W, 3) -> reconstruction (B, H, W, out_channels).

  H and W must be multiples of 16. At base width 128 it has 69,048,579 parameters; with
  `sspcab` (the encoder's last block replaced by `layers.SSPCAB`) 54,629,763.
  """

  width: int = 128
  out_channels: int = 3
  dtype: Dtype = jnp.float32
  layer_impl: str = "custom"  # "custom" or "plain" (layers.py); same variables either way.
  sspcab: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, dt, impl = self.width, self.dtype, self.layer_impl
    x = x.astype(dt)
    # Encoder: four pooled blocks and a bottleneck block (16x16 at 256 input).
    for i, mult in enumerate((1, 2, 4, 8)):
      x = Block(mult * w, dtype=dt, impl=impl, name=f"enc_block{i + 1}")(x, train)
      x = layers.max_pool(x, impl)  # Looked up at call time (onnx_ops).
    if self.sspcab:
      x = SSPCAB(8 * w, dtype=dt, name="enc_sspcab")(x)
    else:
      x = Block(8 * w, dtype=dt, impl=impl, name="enc_block5")(x, train)
    # Decoder: up+conv(c->c), conv(c->c), conv(c->c').
    for i, (c, c_out) in enumerate(((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w))):
      x = UpConvBNReLU(c, dtype=dt, impl=impl, name=f"dec_up{i + 1}")(x, train)
      x = Block(c_out, mid_features=c, dtype=dt, impl=impl, name=f"dec_block{i + 1}")(x, train)
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
  layer_impl: str = "custom"  # "custom" or "plain" (layers.py); same variables either way.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, dt, impl = self.width, self.dtype, self.layer_impl
    x = x.astype(dt)
    skips = []
    for i, mult in enumerate((1, 2, 4, 8, 8)):
      x = Block(mult * b, dtype=dt, impl=impl, name=f"enc_block{i + 1}")(x, train)
      skips.append(x)
      x = layers.max_pool(x, impl)  # Looked up at call time (onnx_ops).
    x = Block(8 * b, dtype=dt, impl=impl, name="enc_block6")(x, train)  # 8x8 at 256 input.
    # Decoder: up+conv, then concat(upsampled, encoder feature) -> block.
    for i, mult in enumerate((8, 4, 2, 1, 1)):
      x = UpConvBNReLU(mult * b, dtype=dt, impl=impl, name=f"dec_up{i + 1}")(x, train)
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = Block(mult * b, dtype=dt, impl=impl, name=f"dec_block{i + 1}")(x, train)
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
  layer_impl: str = "custom"  # "custom" or "plain" (see layers.py); not "auto".
  sspcab: bool = False

  def setup(self):
    self.reconstructive = ReconstructiveSubNetwork(self.recon_width, 3, self.dtype,
                                                   self.layer_impl, self.sspcab)
    self.discriminative = DiscriminativeSubNetwork(self.disc_width, 2, self.dtype,
                                                   self.layer_impl)

  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Args: x (B, H, W, 3) in [0, 1]. Returns (reconstruction (B, H, W, 3),
    logits (B, H, W, 2)), both float32."""
    rec = self.reconstructive(x, train)
    logits = self.discriminative(jnp.concatenate([rec, x.astype(rec.dtype)], axis=-1), train)
    return rec, logits


class DiscriminativeOnly(nn.Module):
  """The paper's "Disc." ablation: the discriminative network alone on the input.

  (B, H, W, 3) -> (None, logits (B, H, W, 2)); trained with the focal loss only.
  """

  disc_width: int = 64
  dtype: Dtype = jnp.float32
  layer_impl: str = "custom"

  def setup(self):
    self.discriminative = DiscriminativeSubNetwork(self.disc_width, 2, self.dtype,
                                                   self.layer_impl)

  def __call__(self, x: jax.Array, train: bool) -> tuple[None, jax.Array]:
    return None, self.discriminative(x, train)


class ReconstructiveAE(nn.Module):
  """The paper's "Recon.-AE" ablation: the reconstructive network alone.

  (B, H, W, 3) -> (reconstruction (B, H, W, 3), None); trained with l2 + (1 - SSIM), scored
  by `anomaly_map` as 1 - SSIM(input, reconstruction).
  """

  recon_width: int = 128
  dtype: Dtype = jnp.float32
  layer_impl: str = "custom"
  sspcab: bool = False

  def setup(self):
    self.reconstructive = ReconstructiveSubNetwork(self.recon_width, 3, self.dtype,
                                                   self.layer_impl, self.sspcab)

  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, None]:
    return self.reconstructive(x, train), None


VARIANTS = ("draem", "disc_only", "recon_ae")


def anomaly_map(images: jax.Array, reconstruction: jax.Array | None,
                logits: jax.Array | None) -> jax.Array:
  """The per-pixel anomaly map of a model's outputs, (B, H, W) float32.

  With logits (DRAEM, the discriminative network alone): the softmax probability of the
  anomalous class. Without (the reconstructive network alone, the paper's Recon.-AE):
  1 - SSIM(input, reconstruction) per pixel (11x11 Gaussian statistics, data range 1, so
  that an image's map does not depend on the rest of its batch), averaged over the channels
  and clipped to [0, 1] (SSIM below 0, anti-correlated structure, counts as fully anomalous).

  Args:
    images: (B, H, W, 3) network input in [0, 1].
    reconstruction: (B, H, W, 3) or None.
    logits: (B, H, W, 2) or None.
  """
  if logits is not None:
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]
  ssim = losses.ssim_map(images.astype(jnp.float32), reconstruction.astype(jnp.float32),
                         data_range=1.0)
  return jnp.clip(1.0 - jnp.mean(ssim, axis=-1), 0.0, 1.0)


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
  # Only the variables: init also returns what modules sow (SSPCAB's loss).
  abstract = {name: abstract[name] for name in ("params", "batch_stats") if name in abstract}
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


def xla_compiler_options(mesh_or_devices) -> dict[str, str] | None:
  """`compiler_options` for `jax.jit` of the networks: `XLA_CPU_COMPILER_OPTIONS` on CPU.

  Args:
    mesh_or_devices: a `jax.sharding.Mesh` or a sequence of devices the function runs on.

  Returns:
    The options when every device is a CPU and this jaxlib's XLA knows them, else None
    (GPU/TPU compile as they are; so does a jaxlib whose XLA has no such option).
  """
  devices = getattr(mesh_or_devices, "devices", mesh_or_devices)
  platforms = {d.platform for d in np.asarray(devices, dtype=object).ravel()}
  if platforms != {"cpu"} or not _cpu_options_supported():
    return None
  return dict(XLA_CPU_COMPILER_OPTIONS)


@functools.cache
def _cpu_options_supported() -> bool:
  """Whether XLA:CPU accepts `XLA_CPU_COMPILER_OPTIONS` (unknown options fail compilation)."""
  try:
    x = jax.device_put(np.zeros((), np.float32), jax.devices("cpu")[0])
    jax.jit(lambda x: x + 1, compiler_options=XLA_CPU_COMPILER_OPTIONS).lower(x).compile()
    return True
  except Exception:  # pylint: disable=broad-except  # XlaRuntimeError or ValueError.
    return False


def create_model(model_config, platform: str | None = None) -> nn.Module:
  """Builds the model of config.model (variant, recon_width, disc_width, dtype, layer_impl,
  sspcab).

  `model.layer_impl` "auto" (or absent, as in configs saved before it existed) is resolved
  for `platform` (default: JAX's default backend) by `layers.resolve_layer_impl`. A missing
  model.variant / model.sspcab (older config.json) is DRAEM without SSPCAB.
  """
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise ConfigError(
        f"model.dtype={model_config.dtype!r} is not supported; use 'float32' or 'bfloat16'.")
  for field in ("recon_width", "disc_width"):
    if int(getattr(model_config, field)) <= 0:
        raise ConfigError(f"model.{field} must be a positive integer, got "
                        f"{getattr(model_config, field)!r}.")
  impl = layers.resolve_layer_impl(model_config.get("layer_impl", "auto"), platform)
  variant = model_config.get("variant", "draem")
  sspcab = model_config.get("sspcab", False)
  if variant not in VARIANTS:
    raise ConfigError(f"model.variant={variant!r} must be one of {VARIANTS}.")
  if sspcab not in (True, False):
    raise ConfigError(f"model.sspcab={sspcab!r} must be True or False.")
  if sspcab and variant == "disc_only":
    raise ConfigError("model.sspcab=True replaces a block of the reconstructive network, which "
                      "model.variant='disc_only' does not have.")
  dtype = dtypes[model_config.dtype]
  recon, disc = int(model_config.recon_width), int(model_config.disc_width)
  if variant == "disc_only":
    return DiscriminativeOnly(disc, dtype, impl)
  if variant == "recon_ae":
    return ReconstructiveAE(recon, dtype, impl, bool(sspcab))
  return DRAEM(recon, disc, dtype, impl, bool(sspcab))


def count_params(params) -> int:
  """Total number of parameter entries in a pytree (works on ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def predict(model: nn.Module, variables: dict, images: jax.Array
            ) -> tuple[jax.Array | None, jax.Array]:
  """Inference: reconstruction and the pixel anomaly map (BatchNorm running statistics).

  Args:
    model: a module of `create_model`.
    variables: {'params', 'batch_stats'}.
    images: (B, H, W, 3) in [0, 1].

  Returns:
    (reconstruction (B, H, W, 3) or None, anomaly map (B, H, W) of `anomaly_map`), float32.
  """
  rec, logits = model.apply(variables, images, train=False)
  return rec, anomaly_map(images, rec, logits)
