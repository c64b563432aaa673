"""The jitted, sharded train step: device-count invariance, learning, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvtec
from draem_jax.training import losses
from draem_jax import models
from draem_jax.training import parallel
from draem_jax.training import train_step as ts

IMAGE = (32, 32)
BATCH = 4


def tiny_config(dtype="float32"):
  config = mvtec.get_config()
  config.model.recon_width = 4
  config.model.disc_width = 4
  config.model.dtype = dtype
  config.train.batch_size = BATCH
  config.optim.learning_rate = 1e-3
  return config


def fixed_batch(seed=0):
  """A pre-simulated batch: clean target, augmented input with a square anomaly, mask."""
  rng = np.random.default_rng(seed)
  target = rng.uniform(size=(BATCH, *IMAGE, 3)).astype(np.float32)
  mask = np.zeros((BATCH, *IMAGE, 1), np.float32)
  mask[1:, 8:20, 10:22] = 1
  augmented = np.where(mask > 0, rng.uniform(size=target.shape), target).astype(np.float32)
  return {"target": target, "augmented": augmented, "mask": mask}


def build(config, devices, total_steps=100, tx=None, model=None):
  mesh = parallel.make_mesh(devices)
  model = model or models.create_model(config.model)
  tx = tx or ts.make_optimizer(config.optim, total_steps)
  state = ts.create_train_state(jax.random.key(0), model, tx, IMAGE, mesh)
  traces = []

  def counted_step(state, batch):
    traces.append(1)  # Runs only while tracing: counts compilations.
    return ts.make_train_step(model, tx, config)(state, batch)

  step = ts.jit_train_step(counted_step, mesh)
  return mesh, state, step, traces


def run(config, devices, num_steps, batch, tx=None, model=None):
  mesh, state, step, traces = build(config, devices, tx=tx, model=model)
  history = []
  for _ in range(num_steps):
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    history.append({k: float(v) for k, v in metrics.items()})
  return jax.device_get(state), history, traces


@pytest.fixture(scope="module")
def four_device_run():
  assert len(jax.devices()) >= 4, "conftest must provide 4 CPU devices"
  return run(tiny_config(), jax.devices()[:4], 6, fixed_batch())


def test_four_devices_equal_one_device():
  # Whole states after two steps, computed in float64 (params stay float32). In float32 the
  # comparison says little: four devices sum in another order, and this tiny network (BatchNorm
  # over a handful of values, [0, 1] inputs) amplifies rounding in some gradients to ~1%, as
  # merely permuting the batch on one device does. Plain SGD, because Adam's first update is
  # ~lr * sign(grad) and conv biases right before BatchNorm have a true gradient of zero.
  import optax
  sgd = optax.sgd(0.05)
  with jax.enable_x64(True):
    model = models.DRAEM(4, 4, dtype=jnp.float64)
    state4, h4, traces4 = run(tiny_config(), jax.devices()[:4], 2, fixed_batch(), sgd, model)
    state1, h1, traces1 = run(tiny_config(), jax.devices()[:1], 2, fixed_batch(), sgd, model)
  # float64 activations leave the float32 BatchNorm statistics float32: no retracing.
  assert len(traces4) == len(traces1) == 1
  assert h4[1]["loss"] == pytest.approx(h1[1]["loss"], rel=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         state4, state1)
  assert int(state1.step) == 2 and h4[1]["loss"] < h4[0]["loss"]


def test_loss_decreases_on_fixed_batch(four_device_run):
  _, hist, _ = four_device_run
  losses_seen = [h["loss"] for h in hist]
  assert losses_seen[-1] < losses_seen[0] - 0.01, losses_seen
  assert all(np.isfinite(losses_seen))
  for h in hist:
    assert h["loss"] == pytest.approx(h["l2"] + h["ssim"] + h["focal"], rel=1e-5)
    assert h["anomaly_fraction"] == pytest.approx(0.75)


def test_no_recompilation_after_first_step(four_device_run):
  _, _, traces = four_device_run
  assert len(traces) == 1


def test_bfloat16_mode_runs_with_finite_losses():
  state, hist, _ = run(tiny_config("bfloat16"), jax.devices()[:4], 2, fixed_batch())
  assert all(np.isfinite(v) for h in hist for v in h.values())
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(state.params))


def test_segmentation_loss_trains_the_reconstruction():
  # The reconstruction is not detached: the focal term alone has gradients in R.
  model = models.DRAEM(4, 4)
  batch = fixed_batch()
  variables = models.init_variables(model, jax.random.key(0), (BATCH, *IMAGE, 3))

  def focal_only(params):
    (_, logits), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 batch["augmented"], train=True, mutable=["batch_stats"])
    return losses.focal(logits, batch["mask"])

  grads = jax.jit(jax.grad(focal_only))(variables["params"])
  rec_grad = grads["reconstructive"]["dec_block4"]["cbr2"]["conv"]["kernel"]
  assert float(jnp.max(jnp.abs(rec_grad))) > 0


def test_learning_rate_schedule_boundaries():
  optim = mvtec.get_config().optim
  steps_per_epoch = 27  # ceil(209 / 8), as the reference.
  total = ts.num_train_steps(mvtec.get_config().train, 209)
  assert total == 700 * steps_per_epoch
  lr = ts.learning_rate_schedule(optim, total)
  at = lambda epoch, offset=0: float(lr(jnp.asarray(epoch * steps_per_epoch + offset)))
  assert at(0) == pytest.approx(1e-4)
  assert at(560, -1) == pytest.approx(1e-4)
  assert at(560) == pytest.approx(2e-5)
  assert at(630, -1) == pytest.approx(2e-5)
  assert at(630) == pytest.approx(4e-6)
  assert at(699, steps_per_epoch - 1) == pytest.approx(4e-6)


def test_step_counts_and_config_errors():
  from draem_jax.errors import ConfigError
  train = mvtec.get_config().train
  train.num_steps = 123
  assert ts.num_train_steps(train, 209) == 123
  train.num_steps, train.batch_size = -1, 300
  with pytest.raises(ConfigError, match="train.batch_size"):
    ts.num_train_steps(train, 209)
  mesh = parallel.make_mesh(jax.devices()[:4])
  with pytest.raises(ConfigError, match="train.batch_size"):
    parallel.check_batch_size(6, mesh)


@pytest.mark.parametrize("category, images, per_epoch", [("bottle", 209, 27),
                                                         ("toothbrush", 60, 8)])
def test_epoch_is_ceil_of_images_over_batch(category, images, per_epoch):
  train = mvtec.get_config(category).train
  assert ts.steps_per_epoch(train.batch_size, images) == per_epoch
  assert ts.num_train_steps(train, images) == 700 * per_epoch
  train.num_epochs = 3
  assert ts.num_train_steps(train, 64) == 3 * 8  # An exact multiple: no extra step.


def test_simulator_keys_are_independent_of_the_parameter_key():
  seed = 0
  param_key, simulator_key = ts.run_keys(seed)
  raw = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())
  # Keys the parameter initialisation derives (init_variables splits its key in two) and
  # those of the first training steps' simulator draws.
  init_keys = {raw(param_key)} | {raw(k) for k in jax.random.split(param_key)}
  step_keys = [raw(jax.random.fold_in(simulator_key, s)) for s in range(64)]
  assert not init_keys & set(step_keys) and len(set(step_keys)) == 64
  assert raw(param_key) != raw(simulator_key)
  # The derivation this replaces collided: fold_in(key(seed), s) == split(key(seed), n)[s].
  old_step_keys = {raw(jax.random.fold_in(jax.random.key(seed), s)) for s in range(2)}
  old_init = {raw(k) for k in jax.random.split(jax.random.key(seed))}
  assert old_step_keys == old_init
