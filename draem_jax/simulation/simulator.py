"""DRAEM's anomaly simulator on the accelerator (DRAEM_SPEC section 4).

`simulate(key, images, textures, cfg)` turns a batch of clean images and anomaly-source
textures into the training inputs of one step. Per sample, with its own key from
`jax.random.split(key, B)`:

0. if any `jitter_*` range is > 0 (default off; not in the paper), the clean image gets a
   photometric jitter (`photometric_jitter`: gamma, contrast, brightness, factors drawn from
   the sample's key); everything below then uses the jittered image, so that the target and
   the input get the identical change;
1. with probability `rotate_prob` the clean image is rotated by U(-rotate_max_deg,
   rotate_max_deg) degrees (bilinear, fill 0); the result is the reconstruction target and
   the base of the anomaly;
2. with probability 1 - `anomaly_prob` the sample stays clean: augmented = target, mask 0,
   has_anomaly 0;
3. otherwise a Perlin mask M (noise with lattice (2^kx, 2^ky), kx, ky ~ U{perlin_min_log2..
   perlin_max_log2}, rotated by U(-perlin_rotate_max_deg, +) degrees, M = noise >
   perlin_threshold), the texture A after `num_augmenters` distinct augmenters, beta ~
   U[0, beta_max) and
     augmented = I (1 - M) + (1 - beta) A M + beta I M,   has_anomaly = any(M).

The paper's ablations (its Table 3) are switches of this step, each off by default:
`mask_shape="rectangles"` (M a union of random rectangles, `masks.rectangle_mask`),
`texture_source="color"` (A one uniform random colour per sample, no augmenters: they would
only change the colour, and the rotation would add black corners), `augment_textures=False`
(A as read) and `random_opacity=False` (beta = 0, A fully opaque). Their draws come from the
keys the default uses (the colour from the texture key), so every other draw stays the same.

The scalar draws of a sample (branch, angles, kx, ky, augmenter indices, beta; see
`sample_draws`) are made for every sample; the image work of each branch sits in `lax.cond` /
`lax.switch`. `simulate_masks` gives the masks of `simulate` without the image work, for
measuring the sampler's statistics at full size.

How the batch is processed is `cfg.batching`: "vmap" vectorises the per-sample function (the
conditionals become selects that compute every branch and all ten augmenters at each of the
three steps: the right trade on GPU/TPU, where the batch runs in parallel); "map" loops over
the samples, so that only the drawn branch and the three drawn augmenters run (about 10x
faster than "vmap" on a 2-core CPU, see bench/simulator.py): the outputs start as a clean
batch, made vectorised, and the loop overwrites in place only the rotated and the anomalous
samples; "auto" picks "map" on the CPU backend and "vmap" elsewhere. Both give the same values
for the same key. A batch sharded over an Explicit mesh axis is always vectorised (the loop
cannot index into it).

Differences from the reference loader, on purpose: the clean image is rotated in float (the
reference rotates the uint8 image, rounding it); rotated targets and blends are clipped to
[0, 1] (float rounding otherwise overshoots by 1e-7); the texture augmenters follow
`draem_jax.simulation.augment` (documented approximations there); the Perlin lattice coordinates are
exact for any image size (see `draem_jax.simulation.perlin`).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from draem_jax.simulation import augment
from draem_jax.simulation import masks
from draem_jax.errors import ConfigError

_BATCHING_MODES = ("auto", "vmap", "map")
MASK_SHAPES = ("perlin", "rectangles")
TEXTURE_SOURCES = ("textures", "color")


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """Static simulator settings; field names and meanings as in configs/mvtec.py `simulator`."""
  rotate_prob: float = 0.3
  rotate_max_deg: float = 90.0
  anomaly_prob: float = 0.5
  perlin_min_log2: int = 0
  perlin_max_log2: int = 5
  perlin_rotate_max_deg: float = 90.0
  perlin_threshold: float = 0.5
  beta_max: float = 0.8
  num_augmenters: int = 3
  texture_rotate_max_deg: float = 45.0
  batching: str = "auto"
  jitter_brightness: float = 0.0
  jitter_contrast: float = 0.0
  jitter_gamma: float = 0.0
  mask_shape: str = "perlin"
  texture_source: str = "textures"
  augment_textures: bool = True
  random_opacity: bool = True

  def __post_init__(self):
    for field in dataclasses.fields(self):  # Accept e.g. 1 for 1.0 from command-line overrides.
      value = getattr(self, field.name)
      try:
        if field.type is int and float(value) != int(value):
          raise ValueError("not an integer")
        if field.type is bool and value not in (True, False):  # bool("false") would be True.
          raise ValueError("not a boolean")
        object.__setattr__(self, field.name, field.type(value))
      except (TypeError, ValueError) as e:
        raise ConfigError(f"config.simulator.{field.name} = {value!r} must be a "
                          f"{field.type.__name__}.") from e
    for name in ("rotate_prob", "anomaly_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ConfigError(f"config.simulator.{name} = {value} must be a probability in [0, 1].")
    if not 0 <= self.perlin_min_log2 <= self.perlin_max_log2 <= 10:
      raise ConfigError(
          "config.simulator.perlin_min_log2 / perlin_max_log2 = "
          f"{self.perlin_min_log2} / {self.perlin_max_log2} must satisfy "
          "0 <= perlin_min_log2 <= perlin_max_log2 <= 10 (resolutions 2^k).")
    if not 0.0 <= self.beta_max <= 1.0:
      raise ConfigError(f"config.simulator.beta_max = {self.beta_max} must lie in [0, 1].")
    if not 0 <= self.num_augmenters <= augment.NUM_AUGMENTERS:
      raise ConfigError(
          f"config.simulator.num_augmenters = {self.num_augmenters} must be between 0 and "
          f"{augment.NUM_AUGMENTERS} (they are drawn without repetition).")
    for name in ("jitter_brightness", "jitter_contrast", "jitter_gamma"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ConfigError(f"config.simulator.{name} = {value} must lie in [0, 1): the factor is "
                          f"drawn from U(1 - {name}, 1 + {name}); 0 turns it off.")
    if self.batching not in _BATCHING_MODES:
      raise ConfigError(f"config.simulator.batching = {self.batching!r} must be one of "
                        f"{_BATCHING_MODES}.")
    if self.mask_shape not in MASK_SHAPES:
      raise ConfigError(f"config.simulator.mask_shape = {self.mask_shape!r} must be one of "
                        f"{MASK_SHAPES}.")
    if self.texture_source not in TEXTURE_SOURCES:
      raise ConfigError(f"config.simulator.texture_source = {self.texture_source!r} must be "
                        f"one of {TEXTURE_SOURCES}.")

  @property
  def jitter(self) -> bool:
    """Whether the photometric jitter of the clean image is on."""
    return self.jitter_brightness > 0 or self.jitter_contrast > 0 or self.jitter_gamma > 0

  @classmethod
  def from_config(cls, cfg: Any) -> "SimulatorConfig":
    """From `config.simulator` (a ConfigDict or mapping); missing fields keep the defaults."""
    if isinstance(cfg, cls):
      return cfg
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg.keys()) - set(names))
    if unknown:
      raise ConfigError(f"config.simulator has unknown field(s) {unknown}; the fields are "
                        f"{names} (see configs/mvtec.py).")
    return cls(**{name: cfg[name] for name in names if name in cfg})


class SimulatorOutput(NamedTuple):
  """One simulated batch.

  Attributes:
    target: (B, H, W, 3) float32 in [0, 1], the clean image after the optional rotation (the
      reconstruction target).
    augmented: (B, H, W, 3) float32 in [0, 1], the network input.
    mask: (B, H, W, 1) float32 in {0, 1}, the anomaly mask.
    has_anomaly: (B,) float32 in {0, 1}.
  """
  target: jax.Array
  augmented: jax.Array
  mask: jax.Array
  has_anomaly: jax.Array


class SimulatorDetails(NamedTuple):
  """The draws behind a `SimulatorOutput` (for tests, statistics and figures).

  Attributes:
    rotated: (B,) bool, whether the clean image was rotated.
    anomaly_branch: (B,) bool, whether the sample took the anomaly branch.
    perlin_log2: (B, 2) int32 (kx, ky), drawn for every sample.
    augmenters: (B, num_augmenters) int32 indices into `augment.AUGMENTER_NAMES`, in order.
    beta: (B,) float32 blend factor.
    texture: (B, H, W, 3) float32 0..255, the anomaly source A (augmented texture or colour;
      the input texture where the sample is clean).
  """
  rotated: jax.Array
  anomaly_branch: jax.Array
  perlin_log2: jax.Array
  augmenters: jax.Array
  beta: jax.Array
  texture: jax.Array


def _to_unit(images: jax.Array) -> jax.Array:
  """uint8 0..255 -> float32 [0, 1]; floats are taken as [0, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _to_byte_range(textures: jax.Array) -> jax.Array:
  """uint8 -> float32 0..255; floats in [0, 1] are scaled and rounded onto the uint8 grid."""
  if textures.dtype == jnp.uint8:
    return textures.astype(jnp.float32)
  return jnp.clip(jnp.round(textures.astype(jnp.float32) * 255.0), 0.0, 255.0)


def perlin_mask(key: jax.Array, log2_res: jax.Array, shape: tuple[int, int],
                cfg: Any) -> jax.Array:
  """`masks.perlin_mask` with the config's resolution range, rotation and threshold.

  Args:
    key: PRNG key for the gradient angles and the rotation angle.
    log2_res: (2,) int32 (kx, ky); the lattice has (2^kx, 2^ky) cells along (rows, columns).
    shape: static (H, W).
    cfg: `config.simulator` or a SimulatorConfig.

  Returns:
    (H, W, 1) float32 in {0, 1}.
  """
  c = SimulatorConfig.from_config(cfg)
  return masks.perlin_mask(key, log2_res, shape, c.perlin_max_log2, c.perlin_rotate_max_deg,
                           c.perlin_threshold)


def anomaly_mask(key: jax.Array, log2_res: jax.Array, shape: tuple[int, int],
                 cfg: Any) -> jax.Array:
  """The anomaly branch's mask of `cfg.mask_shape`: (H, W, 1) float32 in {0, 1}.

  Args as `perlin_mask`; rectangles use only the key.
  """
  c = SimulatorConfig.from_config(cfg)
  if c.mask_shape == "rectangles":
    return masks.rectangle_mask(key, shape)
  return perlin_mask(key, log2_res, shape, c)


class SampleDraws(NamedTuple):
  """The random draws of one sample (leading batch axis when batched).

  Attributes:
    rotated: bool, whether the clean image is rotated.
    angle: float32 rotation angle of the clean image in degrees.
    anomaly_branch: bool, whether the sample gets an anomaly.
    perlin_log2: (2,) int32 (kx, ky) of the Perlin lattice.
    augmenters: (num_augmenters,) int32 distinct indices into `augment.AUGMENTER_NAMES`.
    beta: float32 blend factor in [0, beta_max) (0 without random_opacity).
    mask_key: PRNG key of the mask (Perlin gradients and rotation, or the rectangles).
    texture_key: PRNG key of the augmenters' parameters (or of the colour).
  """
  rotated: jax.Array
  angle: jax.Array
  anomaly_branch: jax.Array
  perlin_log2: jax.Array
  augmenters: jax.Array
  beta: jax.Array
  mask_key: jax.Array
  texture_key: jax.Array


def _draw(key: jax.Array, c: SimulatorConfig) -> SampleDraws:
  """All scalar draws of one sample from its key.

  One uniform vector serves all scalars (every threefry call costs XLA:CPU compile time):
  Bernoulli(p) is u < p, U(a, b) is a + (b - a) u, U{m..n} is m + floor((n - m + 1) u).
  """
  k_scalars, k_mask, k_texture = jax.random.split(key, 3)
  u = jax.random.uniform(k_scalars, (6 + c.num_augmenters,), jnp.float32)
  levels = c.perlin_max_log2 - c.perlin_min_log2 + 1
  return SampleDraws(
      rotated=u[0] < c.rotate_prob,
      angle=(2.0 * u[1] - 1.0) * c.rotate_max_deg,
      anomaly_branch=u[2] < c.anomaly_prob,
      perlin_log2=(c.perlin_min_log2 + jnp.floor(u[3:5] * levels)).astype(jnp.int32),
      augmenters=augment.draw_augmenters(u[6:]),
      beta=u[5] * c.beta_max if c.random_opacity else jnp.zeros((), jnp.float32),
      mask_key=k_mask,
      texture_key=k_texture)


def sample_draws(key: jax.Array, batch_size: int, cfg: Any) -> SampleDraws:
  """The draws `simulate(key, ...)` makes for a batch of `batch_size`, without any image work.

  Args:
    key: the batch's PRNG key, as passed to `simulate`.
    batch_size: static B.
    cfg: `config.simulator` or a SimulatorConfig.

  Returns:
    SampleDraws with a leading axis B.
  """
  c = SimulatorConfig.from_config(cfg)
  return jax.vmap(lambda k: _draw(k, c))(jax.random.split(key, batch_size))


def _mask_one(draws: SampleDraws, shape: tuple[int, int], c: SimulatorConfig) -> jax.Array:
  """The sample's mask: the anomaly mask in the anomaly branch, zeros otherwise."""
  return jax.lax.cond(draws.anomaly_branch,
                      lambda: anomaly_mask(draws.mask_key, draws.perlin_log2, shape, c),
                      lambda: jnp.zeros((*shape, 1), jnp.float32))


def _rotated_target(image: jax.Array, angle: jax.Array) -> jax.Array:
  """(H, W, 3) uint8 or [0, 1] float clean image -> rotated float32 target in [0, 1]."""
  # The clip keeps the bilinear weights' float rounding inside [0, 1].
  return jnp.clip(augment.rotate(_to_unit(image), angle), 0.0, 1.0)


def _anomaly(target: jax.Array, texture: jax.Array, d: SampleDraws, c: SimulatorConfig
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The anomaly branch of one sample.

  Args:
    target: (H, W, 3) float32 in [0, 1], the (possibly rotated) clean image.
    texture: (H, W, 3) uint8 or [0, 1] float anomaly-source texture.
    d: the sample's draws.
    c: the simulator config.

  Returns:
    augmented (H, W, 3) float32 in [0, 1], mask (H, W, 1) float32 in {0, 1}, augmented
    texture (H, W, 3) float32 0..255.
  """
  mask = anomaly_mask(d.mask_key, d.perlin_log2, target.shape[:2], c)
  texture = _anomaly_source(texture, d, c)
  source = texture / 255.0
  # The clip keeps the blend's float rounding inside [0, 1].
  augmented = jnp.clip(target * (1.0 - mask) + (1.0 - d.beta) * source * mask +
                       d.beta * target * mask, 0.0, 1.0)
  return augmented, mask, texture


def _anomaly_source(texture: jax.Array, d: SampleDraws, c: SimulatorConfig) -> jax.Array:
  """The anomaly source A of one sample, (H, W, 3) float32 0..255 on the uint8 grid.

  "textures": the texture after the drawn augmenters (or as read without augment_textures);
  "color": one colour ~ U{0..255}^3 from the texture key, over the whole image.
  """
  if c.texture_source == "color":
    colour = jnp.floor(jax.random.uniform(d.texture_key, (3,), jnp.float32) * 256.0)
    return jnp.broadcast_to(jnp.minimum(colour, 255.0), texture.shape)
  texture = _to_byte_range(texture)
  if not c.augment_textures:
    return texture
  return augment.augment_texture(d.texture_key, texture, d.augmenters, c.texture_rotate_max_deg)


def _simulate_one(d: SampleDraws, image: jax.Array, texture: jax.Array,
                  c: SimulatorConfig) -> tuple[SimulatorOutput, jax.Array]:
  """One sample (the "vmap" mode): image and texture (H, W, 3) uint8 or float in [0, 1] ->
  outputs and the augmented texture (H, W, 3) float32 0..255.

  The conversions to float happen inside the branches that use them, rather than on the
  whole batch, so that they fuse into each sample's first use.
  """
  shape = image.shape[:2]
  target = jax.lax.cond(d.rotated, lambda x: _rotated_target(x, d.angle), _to_unit, image)

  def clean(texture):
    return target, jnp.zeros((*shape, 1), jnp.float32), _to_byte_range(texture)

  augmented, mask, texture = jax.lax.cond(d.anomaly_branch,
                                          lambda t: _anomaly(target, t, d, c), clean, texture)
  has_anomaly = (d.anomaly_branch & jnp.any(mask > 0)).astype(jnp.float32)
  return SimulatorOutput(target, augmented, mask, has_anomaly), texture


def _simulate_loop(draws: SampleDraws, images: jax.Array, textures: jax.Array,
                   c: SimulatorConfig, with_texture: bool
                   ) -> tuple[SimulatorOutput, jax.Array | None]:
  """The "map" mode: a loop over the samples that only writes what differs from a clean one.

  The outputs start as a clean batch, made vectorised (target = augmented = the images in
  [0, 1], mask 0, the textures on the 0..255 grid); the loop then overwrites, in place, the
  slices of the rotated samples (target, augmented) and of the anomalous ones (augmented,
  mask, texture). A per-sample loop that wrote every output of every sample into fresh
  stacked buffers (`lax.map`) spent half its time there on a 2-core CPU (zero-filling and
  copying them): see bench/RESULTS.md.

  Args:
    draws: SampleDraws of the batch (leading axis B).
    images, textures: (B, H, W, 3) uint8 or float in [0, 1].
    c: the simulator config.
    with_texture: whether to also return the augmented textures (B, H, W, 3) float32 0..255.

  Returns:
    SimulatorOutput and the augmented textures (None without with_texture).
  """
  target = _to_unit(images)
  buffers = {"target": target, "augmented": target,
             "mask": jnp.zeros((*images.shape[:3], 1), jnp.float32),
             "has_anomaly": jnp.zeros(images.shape[:1], jnp.float32)}
  if with_texture:
    buffers["texture"] = _to_byte_range(textures)

  def write(buffers, i, **values):
    return {**buffers, **{name: jax.lax.dynamic_update_index_in_dim(buffers[name], value, i, 0)
                          for name, value in values.items()}}

  def sample(i, buffers):
    d = jax.tree.map(lambda x: x[i], draws)

    def rotated(buffers):
      target = _rotated_target(images[i], d.angle)
      return write(buffers, i, target=target, augmented=target)

    def anomalous(buffers):
      augmented, mask, texture = _anomaly(buffers["target"][i], textures[i], d, c)
      values = {"augmented": augmented, "mask": mask,
                "has_anomaly": jnp.any(mask > 0).astype(jnp.float32)}
      if with_texture:
        values["texture"] = texture
      return write(buffers, i, **values)

    buffers = jax.lax.cond(d.rotated, rotated, lambda b: b, buffers)
    return jax.lax.cond(d.anomaly_branch, anomalous, lambda b: b, buffers)

  buffers = jax.lax.fori_loop(0, images.shape[0], sample, buffers)
  output = SimulatorOutput(buffers["target"], buffers["augmented"], buffers["mask"],
                           buffers["has_anomaly"])
  return output, buffers.get("texture")


def _explicitly_sharded_batch(x: jax.Array) -> bool:
  """Whether x's leading axis is sharded over an Explicit mesh axis (visible in its type)."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  return bool(spec) and spec[0] is not None


def resolve_batching(mode: str, images: jax.Array | None = None) -> str:
  """The batching mode used for `images`.

  "auto" is "map" on the CPU backend and "vmap" elsewhere. "map" falls back to "vmap" when the
  batch axis is sharded over an Explicit mesh axis, where a loop cannot index into it (with the
  Auto axes of draem_jax.training.parallel's mesh it can, and the partitioner handles the loop).
  """
  if mode == "auto":
    mode = "map" if jax.default_backend() == "cpu" else "vmap"
  if mode == "map" and images is not None and _explicitly_sharded_batch(images):
    mode = "vmap"
  return mode


def _per_sample(fn, c: SimulatorConfig, reference: jax.Array, *xs):
  """fn over the leading axis of xs: `lax.map` or `vmap` as `c.batching` resolves."""
  if resolve_batching(c.batching, reference) == "map":
    return jax.lax.map(lambda args: fn(*args), xs)
  if _explicitly_sharded_batch(reference):  # vmap needs its inputs sharded alike.
    sharding = jax.typeof(reference).sharding
    spec = NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
    xs = tuple(jax.sharding.reshard(x, spec) for x in xs)
  return jax.vmap(fn)(*xs)


JITTER_FOLD = 0x6A17  # Folded into a sample's key for its jitter draws (see jitter_factors).


def jitter_factors(key: jax.Array, batch_size: int, cfg: Any) -> jax.Array:
  """The photometric jitter factors of `simulate(key, ...)` for a batch of `batch_size`.

  Each sample's factors come from its own key (`jax.random.split(key, B)`, as its other draws)
  folded with JITTER_FOLD, so that turning the jitter on leaves every other draw unchanged.

  Args:
    key: the batch's PRNG key, as passed to `simulate`.
    batch_size: static B.
    cfg: `config.simulator` or a SimulatorConfig.

  Returns:
    (B, 3) float32 (brightness, contrast, gamma), each ~ U(1 - r, 1 + r) for its range r
    (exactly 1 where r = 0).
  """
  c = SimulatorConfig.from_config(cfg)
  ranges = jnp.array([c.jitter_brightness, c.jitter_contrast, c.jitter_gamma], jnp.float32)

  def one(k):
    u = jax.random.uniform(jax.random.fold_in(k, JITTER_FOLD), (3,), jnp.float32)
    return 1.0 + (2.0 * u - 1.0) * ranges

  return jax.vmap(one)(jax.random.split(key, batch_size))


def photometric_jitter(images: jax.Array, factors: jax.Array) -> jax.Array:
  """Brightness, contrast and gamma changes of clean images, per sample.

  y = clip(brightness * (m + contrast * (x^gamma - m)), 0, 1), with m the mean of x^gamma over
  the sample's pixels and channels (contrast about the image's own mean, so that it does not
  also change the brightness).

  Args:
    images: (B, H, W, 3) float32 in [0, 1].
    factors: (B, 3) float32 (brightness, contrast, gamma) from `jitter_factors`.

  Returns:
    (B, H, W, 3) float32 in [0, 1].
  """
  b, c, g = (factors[:, i, None, None, None] for i in range(3))
  y = jnp.power(images, g)
  m = jnp.mean(y, axis=(1, 2, 3), keepdims=True)
  return jnp.clip(b * (m + c * (y - m)), 0.0, 1.0)


def _simulate(key: jax.Array, images: jax.Array, textures: jax.Array, cfg: Any,
              with_texture: bool) -> tuple[SimulatorOutput, SimulatorDetails | None]:
  """`simulate`; also the details when with_texture (they need the augmented textures)."""
  c = SimulatorConfig.from_config(cfg)
  if images.ndim != 4 or images.shape[-1] != 3 or textures.shape != images.shape:
    raise ValueError(f"simulate expects images and textures of the same shape (B, H, W, 3); "
                     f"got {images.shape} and {textures.shape}.")
  draws = sample_draws(key, images.shape[0], c)
  if c.jitter:
    # Before the rotation and the anomaly, so that target and input get the identical change
    # (the change is normal, the model must not flag it); off, the images pass untouched.
    images = photometric_jitter(_to_unit(images), jitter_factors(key, images.shape[0], c))
  if resolve_batching(c.batching, images) == "map":
    output, texture = _simulate_loop(draws, images, textures, c, with_texture)
  else:
    output, texture = _per_sample(lambda d, i, t: _simulate_one(d, i, t, c), c, images, draws,
                                  images, textures)
  if not with_texture:
    return output, None
  return output, SimulatorDetails(draws.rotated, draws.anomaly_branch, draws.perlin_log2,
                                  draws.augmenters, draws.beta, texture)


def simulate_with_details(key: jax.Array, images: jax.Array, textures: jax.Array,
                          cfg: Any) -> tuple[SimulatorOutput, SimulatorDetails]:
  """`simulate`, also returning the draws behind each sample (see `SimulatorDetails`)."""
  return _simulate(key, images, textures, cfg, with_texture=True)


def simulate_masks(key: jax.Array, batch_size: int, shape: tuple[int, int],
                   cfg: Any) -> tuple[jax.Array, jax.Array]:
  """The masks and has_anomaly of `simulate(key, ...)` on (batch_size, *shape) images, alone.

  Skips the images and textures (rotation, augmenters, blend), which never change the mask:
  for measuring the sampler's statistics at full size cheaply.

  Args:
    key: the batch's PRNG key, as passed to `simulate`.
    batch_size: static B.
    shape: static (H, W).
    cfg: `config.simulator` or a SimulatorConfig.

  Returns:
    mask (B, H, W, 1) float32 and has_anomaly (B,) float32, equal to simulate's.
  """
  c = SimulatorConfig.from_config(cfg)
  draws = sample_draws(key, batch_size, c)
  masks = _per_sample(lambda d: _mask_one(d, shape, c), c, draws.beta, draws)
  has_anomaly = draws.anomaly_branch & jnp.any(masks > 0, axis=(1, 2, 3))
  return masks, has_anomaly.astype(jnp.float32)


def simulate(key: jax.Array, images: jax.Array, textures: jax.Array,
             cfg: Any) -> SimulatorOutput:
  """Simulates anomalies on a batch (DRAEM_SPEC section 4); jit- and vmap-compatible.

  Args:
    key: PRNG key of this batch (e.g. `fold_in(key(seed), step)`); typed or raw.
    images: (B, H, W, 3) clean images, uint8 0..255 or float in [0, 1].
    textures: (B, H, W, 3) anomaly-source textures already resized to (H, W), uint8 0..255 or
      float in [0, 1] (rounded onto the uint8 grid, which the augmenters work on).
    cfg: `config.simulator` (ConfigDict, read as Python constants) or a SimulatorConfig.

  Returns:
    SimulatorOutput(target, augmented, mask, has_anomaly), float32.
  """
  return _simulate(key, images, textures, cfg, with_texture=False)[0]
