"""The train state, the optimiser and the jitted, sharded train step.

The state is a plain pytree (step, params, batch_stats, opt_state): Orbax saves it as it is
and `jax.jit` donates it. The model and the optimiser are static and live in closures.

Randomness (`run_keys`): one split of key(seed) gives the parameter key and the simulator's
base key; the simulator's key for step s is `fold_in(simulator_key, s)`, a function of the
config and the step only, so a resumed run draws exactly the anomalies an uninterrupted run
would, on any number of devices. With data.crop_size the step first cuts one crop per image,
at positions drawn from `fold_in(step key, windows.CROP_SALT)`, and simulates the anomaly on the
crop (the simulator's own key is unchanged).
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from draem_jax.training import losses as losses_lib
from draem_jax import models
from draem_jax.data import pipeline
from draem_jax.data import windows
from draem_jax.training import parallel
from draem_jax.errors import ConfigError

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training; a pytree of arrays."""

  step: jax.Array  # int32 scalar: number of optimiser updates applied.
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    """The linen variables for `model.apply` (inference uses BatchNorm running statistics)."""
    return {"params": self.params, "batch_stats": self.batch_stats}


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter key, simulator base key) of a run, from one split of key(seed).

  Two independent streams: with partitionable threefry `fold_in(key(seed), s)` equals
  `split(key(seed), n)[s]`, so folding the step into key(seed) itself would draw the first
  steps' anomalies from the very keys that initialised the networks.
  """
  param_key, simulator_key = jax.random.split(jax.random.key(int(seed)))
  return param_key, simulator_key


def steps_per_epoch(batch_size: int, num_train_examples: int) -> int:
  """ceil(examples / batch size), as the reference (whose last batch of an epoch is partial).

  Our batches are always full: they are cut from the repeated stream of per-epoch shuffles,
  so an epoch's last batch continues into the next epoch's images instead of being small
  (BatchNorm on a batch of one or two images is degenerate).
  """
  return -(-int(num_train_examples) // int(batch_size))


def num_train_steps(train_config, num_train_examples: int) -> int:
  """Total optimiser steps: train.num_steps if > 0, else epochs x ceil(examples / batch size).

  See `steps_per_epoch`.
  """
  if train_config.num_steps > 0:
    return int(train_config.num_steps)
  if train_config.batch_size > num_train_examples:
    raise ConfigError(
        f"train.batch_size={train_config.batch_size} is larger than the {num_train_examples} "
        "training images: lower train.batch_size or add images.")
  if train_config.num_epochs <= 0:
    raise ConfigError(f"train.num_epochs={train_config.num_epochs} must be positive (or set "
                      "train.num_steps > 0).")
  return int(train_config.num_epochs) * steps_per_epoch(train_config.batch_size,
                                                        num_train_examples)


def learning_rate_schedule(optim_config, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """Constant lr, multiplied by `decay_factor` once the step reaches each decay fraction.

  With 700 epochs the boundaries are the starts of epochs 560 and 630, as the reference's
  per-epoch `MultiStepLR([0.8 * epochs, 0.9 * epochs], gamma=0.2)`. Update number `count`
  (0-based) uses lr(count).
  """
  boundaries = [round(f * total_steps) for f in optim_config.decay_fractions]
  base, factor = float(optim_config.learning_rate), float(optim_config.decay_factor)

  def schedule(count):
    passed = sum((count >= b).astype(jnp.float32) for b in boundaries)
    return base * jnp.power(factor, passed)

  return schedule


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """Adam (no weight decay) over both networks jointly with the step schedule."""
  if optim_config.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate={optim_config.learning_rate} must be positive.")
  return optax.adam(learning_rate=learning_rate_schedule(optim_config, total_steps),
                    b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps)


def create_train_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int], mesh: Mesh | None = None) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state, replicated on `mesh`.

  Args:
    key: PRNG key for the parameters.
    model: the `DRAEM` module.
    tx: the optimiser.
    image_shape: (H, W) of the training images.
    mesh: where to place the state (default: a mesh over all devices).
  """
  mesh = mesh or parallel.make_mesh()

  def init(key):
    variables = models.init_variables(model, key, (1, *image_shape, 3))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: tuple[int, int], mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state without allocating it (for restoring)."""
  state = jax.eval_shape(lambda k: create_train_state(k, model, tx, image_shape, mesh),
                         jax.random.key(0))
  sharding = parallel.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def simulated_inputs(config, simulate: Callable, step: jax.Array, batch: Batch):
  """(target, augmented, mask, has_anomaly) of a raw {'image', 'texture'} batch at `step`.

  The crops (data.crop_size) and the simulator's draws are functions of (train.seed, step)
  only: the same for a resumed run and on any number of devices.
  """
  _, simulator_key = run_keys(config.train.seed)
  key = jax.random.fold_in(simulator_key, step)
  images = batch["image"]
  crop_hw = pipeline.crop_hw(config)
  if crop_hw is not None:
    images = windows.random_crops(jax.random.fold_in(key, windows.CROP_SALT), images, crop_hw)
  sim = simulate(key, images, batch["texture"], config.simulator)
  return sim.target, sim.augmented, sim.mask, sim.has_anomaly


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, config,
    simulate: Callable | None = None,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Builds `train_step(state, batch) -> (state, metrics)` (not jitted; see `jit_train_step`).

  The batch is either what the data pipeline delivers, {'image': (B, H, W, 3), 'texture':
  (B, h, w, 3)} uint8 (the anomaly simulator then runs on the device, keyed by (seed, step);
  with data.crop_size the images are first cropped to (h, w) = the crop, drawn per sample from
  the same key), or an already simulated {'target', 'augmented', 'mask'} (float32 in [0, 1],
  mask (B, H, W, 1)).

  Metrics: the total loss and its terms l2, ssim (= 1 - SSIM) and focal (those of the
  model's networks, `losses.model_loss`; the others read 0), the learning rate of this update
  (when `learning_rate_fn` is given), and the fraction of samples that carry an anomaly. With
  model.sspcab, the loss adds model.sspcab_lambda x the SSPCAB block's own loss (the MSE
  between its input and output), reported as "sspcab".
  """
  sspcab_lambda = float(config.model.get("sspcab_lambda", 0.1))

  def inputs_of(step, batch):
    if "texture" in batch:
      if simulate is None:
        raise ValueError("make_train_step(simulate=None) got a raw {'image', 'texture'} batch.")
      return simulated_inputs(config, simulate, step, batch)
    mask = batch["mask"].astype(jnp.float32)
    has_anomaly = jnp.any(mask > 0, axis=tuple(range(1, mask.ndim))).astype(jnp.float32)
    return (batch["target"].astype(jnp.float32), batch["augmented"].astype(jnp.float32), mask,
            has_anomaly)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    target, augmented, mask, has_anomaly = inputs_of(state.step, batch)

    def loss_fn(params):
      (rec, logits), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, augmented, train=True,
          mutable=["batch_stats", "losses"])
      terms = losses_lib.model_loss(rec, target, logits, mask)
      sown = jax.tree_util.tree_leaves(updates.get("losses", {}))  # SSPCAB's, when present.
      if not sown:
        return terms.total, (terms, None, updates["batch_stats"])
      block_loss = sum(sown)
      return (terms.total + sspcab_lambda * block_loss,
              (terms, block_loss, updates["batch_stats"]))

    grads, (terms, block_loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state)
    metrics = {"loss": terms.total, "l2": terms.l2, "ssim": terms.ssim, "focal": terms.focal,
               "anomaly_fraction": jnp.mean(has_anomaly)}
    if block_loss is not None:
      metrics["loss"] = terms.total + sspcab_lambda * block_loss
      metrics["sspcab"] = block_loss
    if learning_rate_fn is not None:
      metrics["learning_rate"] = learning_rate_fn(state.step)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh: Mesh):
  """jit with explicit shardings: state replicated and donated, batch sharded on 'data'.

  On CPU meshes the step compiles with `models.xla_compiler_options` (XLA's own convolution
  kernels instead of YNNPACK's, several times faster for DRAEM's backward pass).
  """
  rep = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, parallel.batch_sharded(mesh)),
                 out_shardings=(rep, rep), donate_argnums=(0,),
                 compiler_options=models.xla_compiler_options(mesh))
