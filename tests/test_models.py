"""Architecture facts of DRAEM_SPEC section 1: parameter counts, shapes, upsampling, init."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draem_jax import models


def _abstract_variables(module, shape):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_parameter_counts_at_default_widths():
  variables = _abstract_variables(models.DRAEM(), (1, 256, 256, 3))
  params = variables["params"]
  assert models.count_params(params["reconstructive"]) == 69_048_579
  assert models.count_params(params["discriminative"]) == 28_374_146
  assert models.count_params(params) == 97_422_725


def test_parameter_counts_follow_widths():
  # Spec formulas are linear in conv count: the counts at other widths must differ.
  small = _abstract_variables(models.DRAEM(64, 32), (1, 64, 64, 3))["params"]
  assert models.count_params(small["reconstructive"]) < 69_048_579 // 3


def test_output_shapes_non_square():
  model = models.DRAEM(recon_width=4, disc_width=4)
  x = jnp.zeros((2, 64, 96, 3))
  variables = models.init_variables(model, jax.random.key(0), x.shape)
  rec, logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert rec.shape == (2, 64, 96, 3) and rec.dtype == jnp.float32
  assert logits.shape == (2, 64, 96, 2) and logits.dtype == jnp.float32


def test_discriminator_input_is_reconstruction_first():
  model = models.DRAEM(recon_width=4, disc_width=4)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = models.init_variables(model, jax.random.key(0), x.shape)
  # Training mode: BatchNorm normalises with batch statistics, so inputs matter visibly.
  (rec, logits), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  disc = models.DiscriminativeSubNetwork(4)
  dvars = {"params": variables["params"]["discriminative"],
           "batch_stats": variables["batch_stats"]["discriminative"]}
  def run_disc(inp):
    return disc.apply(dvars, inp, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(run_disc(jnp.concatenate([rec, x], -1)), logits, atol=1e-5)
  swapped = run_disc(jnp.concatenate([x, rec], -1))
  assert not np.allclose(swapped, logits, atol=1e-3)


def _numpy_upsample_align_corners(x):
  """Per-pixel bilinear interpolation at align-corners source coordinates (NHWC)."""
  b, h, w, c = x.shape
  out = np.zeros((b, 2 * h, 2 * w, c), np.float64)
  for i in range(2 * h):
    y = i * (h - 1) / (2 * h - 1)
    y0 = min(int(np.floor(y)), h - 1)
    y1 = min(y0 + 1, h - 1)
    fy = y - y0
    for j in range(2 * w):
      xx = j * (w - 1) / (2 * w - 1)
      x0 = min(int(np.floor(xx)), w - 1)
      x1 = min(x0 + 1, w - 1)
      fx = xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 8, 8, 2), (1, 1, 4, 1)])
def test_upsample_matches_numpy_reference(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = np.asarray(models.upsample2x_align_corners(jnp.asarray(x)))
  np.testing.assert_allclose(got, _numpy_upsample_align_corners(x), atol=1e-5)
  # Corners map onto corners.
  for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    np.testing.assert_allclose(got[:, i, j], x[:, i, j], atol=1e-6)


def test_upsample_differs_from_half_pixel_resize():
  # The reason for our own op: jax.image.resize is the align_corners=False kind.
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 4))
  ours = models.upsample2x_align_corners(x)
  theirs = jax.image.resize(x, (1, 32, 32, 4), "bilinear")
  assert float(jnp.max(jnp.abs(ours - theirs))) > 0.05


@pytest.mark.parametrize("bulk", [False, True], ids=["linen_init", "init_variables"])
def test_initialisation_distributions(bulk):
  model = models.DRAEM(recon_width=32, disc_width=32)
  shape = (1, 32, 32, 3)
  if bulk:
    variables = jax.jit(lambda k: models.init_variables(model, k, shape))(jax.random.key(0))
    reference = _abstract_variables(model, shape)
    assert (jax.tree_util.tree_structure(variables)
            == jax.tree_util.tree_structure(reference))
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables) == (
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), reference))
    var = variables["batch_stats"]["reconstructive"]["enc_block1"]["cbr1"]["bn"]["var"]
    mean = variables["batch_stats"]["reconstructive"]["enc_block1"]["cbr1"]["bn"]["mean"]
    assert np.all(np.asarray(var) == 1) and np.all(np.asarray(mean) == 0)
  else:
    # The linen initialisers themselves, on the layer the networks are built from (a whole
    # network's hundred random draws take XLA on CPU tens of seconds to compile).
    layer = models.Block(256, name="enc_block4")
    wrapped = {"params": {"reconstructive": {"enc_block4": layer.init(
        jax.random.key(0), jnp.zeros((1, 4, 4, 128)), train=False)["params"]},
        "discriminative": {"enc_block1": models.Block(32).init(
            jax.random.key(1), jnp.zeros((1, 4, 4, 6)), train=False)["params"]}}}
    variables = wrapped
  params = variables["params"]
  kernel = np.asarray(params["reconstructive"]["enc_block4"]["cbr2"]["conv"]["kernel"])
  assert kernel.shape == (3, 3, 256, 256)
  assert abs(kernel.mean()) < 1e-3 and abs(kernel.std() - 0.02) < 5e-4
  bias = np.asarray(params["reconstructive"]["enc_block4"]["cbr2"]["conv"]["bias"])
  bound = 1 / np.sqrt(256 * 9)
  assert np.all(np.abs(bias) <= bound) and bias.std() > bound / 3  # U(-b, b): std b/sqrt(3).
  scales = np.concatenate([np.asarray(x).ravel() for path, x in
                           jax.tree_util.tree_leaves_with_path(params)
                           if "bn" in jax.tree_util.keystr(path) and "scale" in
                           jax.tree_util.keystr(path)])
  assert abs(scales.mean() - 1) < 2e-3 and abs(scales.std() - 0.02) < 2e-3
  bn_bias = np.asarray(params["discriminative"]["enc_block1"]["cbr1"]["bn"]["bias"])
  assert np.all(bn_bias == 0)


def test_batchnorm_follows_pytorch_defaults():
  model = models.ConvBNReLU(2)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # running mean = 0.9 * 0 + 0.1 * batch mean.
  conv = variables["params"]["conv"]
  y = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
  new_mean = updates["batch_stats"]["bn"]["mean"]
  np.testing.assert_allclose(new_mean, 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  new_var = updates["batch_stats"]["bn"]["var"]
  # The running average takes the unbiased batch variance, as PyTorch's BatchNorm2d.
  np.testing.assert_allclose(new_var, 0.9 + 0.1 * np.var(np.asarray(y, np.float64),
                                                         axis=(0, 1, 2), ddof=1), rtol=1e-4)
  # Normalisation uses the biased batch variance (also as PyTorch).
  out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  yn = (y - y.mean(axis=(0, 1, 2))) / np.sqrt(y.var(axis=(0, 1, 2)) + 1e-5)
  bn = variables["params"]["bn"]
  np.testing.assert_allclose(out, np.maximum(yn * bn["scale"] + bn["bias"], 0), atol=1e-4)


def test_bfloat16_activations_with_float32_params():
  model = models.DRAEM(recon_width=4, disc_width=4, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  hidden = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True)[1], variables)
  inner = hidden["intermediates"]["reconstructive"]["enc_block1"]["cbr1"]["conv"]["__call__"][0]
  assert inner.dtype == jnp.bfloat16
  rec, logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert rec.dtype == jnp.float32 and logits.dtype == jnp.float32


def test_create_model_rejects_bad_config():
  import ml_collections
  from draem_jax.errors import ConfigError
  cfg = ml_collections.ConfigDict({"recon_width": 8, "disc_width": 8, "dtype": "float16"})
  with pytest.raises(ConfigError, match="model.dtype"):
    models.create_model(cfg)
  cfg.dtype, cfg.disc_width = "float32", 0
  with pytest.raises(ConfigError, match="model.disc_width"):
    models.create_model(cfg)


def test_xla_cpu_compiler_options_and_fallback(monkeypatch):
  assert models.xla_compiler_options(jax.devices()) == models.XLA_CPU_COMPILER_OPTIONS
  # A jaxlib whose XLA lacks the option: compile without options instead of failing.
  monkeypatch.setattr(models.networks, "XLA_CPU_COMPILER_OPTIONS",
                      {"xla_no_such_option_for_test": ""})
  models._cpu_options_supported.cache_clear()  # pylint: disable=protected-access
  try:
    assert models.xla_compiler_options(jax.devices()) is None
  finally:
    models._cpu_options_supported.cache_clear()  # pylint: disable=protected-access


class _EveryLayer(nn.Module):
  """Block (conv/BatchNorm/ReLU) -> max-pool -> upsampling + ConvBNReLU -> conv: the three
  layers of `model.layer_impl` with trainable neighbours, as the networks chain them."""

  impl: str
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    x = models.Block(6, dtype=self.dtype, impl=self.impl)(x, train)
    x = models.max_pool(x, self.impl)
    x = models.UpConvBNReLU(5, dtype=self.dtype, impl=self.impl)(x, train)
    return nn.Conv(2, (3, 3), dtype=self.dtype)(x)


def _impl_outputs_and_grads(impl, variables, x):
  module = _EveryLayer(impl, x.dtype)

  def loss(params, x):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              train=True, mutable=["batch_stats"])
    # Uneven weights so that every output position matters differently.
    return jnp.sum(jnp.linspace(0.5, 1.5, y.size).reshape(y.shape) * y), (
        y, updates["batch_stats"])

  (value, aux), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables["params"], x)
  return value, aux, grads


def test_plain_layers_equal_custom_layers():
  # float64 activations (BatchNorm statistics follow) so that the two formulations agree to
  # float64 rounding; float32 parameters, whose gradients are float32.
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(1), (3, 12, 10, 3), jnp.float64)
    variables = _EveryLayer("custom", jnp.float64).init(jax.random.key(0), x, train=False)
    variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), variables)
    custom, plain = [_impl_outputs_and_grads(impl, variables, x) for impl in ("custom", "plain")]
  assert (jax.tree_util.tree_structure(custom) == jax.tree_util.tree_structure(plain))
  # The float32 parameter gradients are compared on the scale of the largest one: the conv
  # biases before a BatchNorm have a true gradient of zero and carry rounding noise alone.
  param_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(custom[2][0]))
  for a, b in zip(jax.tree_util.tree_leaves(custom), jax.tree_util.tree_leaves(plain)):
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype == jnp.float64:
      np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(a))))
    else:
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * param_scale)


def test_plain_upsample_and_pool_match_custom_on_odd_shapes():
  x = jax.random.normal(jax.random.key(2), (2, 5, 7, 3))
  np.testing.assert_allclose(models.upsample2x_align_corners_plain(x),
                             models.upsample2x_align_corners(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(models.max_pool(x, "plain"), models.max_pool(x, "custom"))
  g = [jax.grad(lambda v: jnp.sum(jnp.sin(models.max_pool(v, impl))))(x)
       for impl in ("custom", "plain")]
  np.testing.assert_array_equal(g[0], g[1])


def test_layer_impl_config_resolution_and_defaults():
  import ml_collections
  from configs import mvtec
  from draem_jax.errors import ConfigError
  config = mvtec.get_config()
  assert config.model.layer_impl == "auto"
  assert models.resolve_layer_impl("auto", "cpu") == "custom"
  assert models.resolve_layer_impl("auto", "gpu") == "plain"
  assert models.resolve_layer_impl("plain", "cpu") == "plain"
  # The default on this (CPU) machine is today's model, module for module.
  assert models.create_model(config.model) == models.DRAEM(128, 64, jnp.float32, "custom")
  # A config saved before the field existed builds the same model.
  old = ml_collections.ConfigDict({"recon_width": 8, "disc_width": 4, "dtype": "float32"})
  assert models.create_model(old, platform="cpu").layer_impl == "custom"
  assert models.create_model(old, platform="gpu").layer_impl == "plain"
  with pytest.raises(ConfigError, match="model.layer_impl"):
    models.resolve_layer_impl("fast")
  # Parameter shapes do not depend on it.
  shapes = [jax.tree_util.tree_map(lambda a: a.shape, _abstract_variables(
      models.DRAEM(8, 4, layer_impl=impl), (1, 32, 32, 3))) for impl in ("custom", "plain")]
  assert shapes[0] == shapes[1]


def test_layer_impl_is_validated_and_free_on_resume():
  from configs import mvtec
  from draem_jax import config_lib
  from draem_jax.errors import ConfigError
  saved, config = mvtec.get_config(), mvtec.get_config()
  config.model.layer_impl = "plain"
  config_lib.validate_config(config)
  assert config_lib.check_resumable(saved, config, "w") == {}
  del saved.model["layer_impl"]  # A run saved before the field existed.
  assert config_lib.check_resumable(saved, config, "w") == {}
  config.model.layer_impl = "fast"
  with pytest.raises(ConfigError, match="model.layer_impl"):
    config_lib.validate_config(config)
