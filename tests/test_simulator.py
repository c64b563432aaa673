"""The anomaly simulator: sampler statistics, blend, determinism, jit/vmap behaviour."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import mvtec
from draem_jax.simulation import augment
from draem_jax.simulation import simulator
from draem_jax.errors import ConfigError

CFG = mvtec.get_config().simulator
# Small, non-square, not a multiple of 32 (nor of the Perlin resolutions).
BATCH, HEIGHT, WIDTH = 12, 36, 52


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=np.uint8)
  textures = rng.integers(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=np.uint8)
  return images, textures


@pytest.fixture(scope="module")
def simulate_jit():
  """The simulator as the train step uses it: jitted once, config read as constants."""
  return jax.jit(lambda k, i, t: simulator.simulate_with_details(k, i, t, CFG))


@pytest.fixture(scope="module")
def draws():
  """The draws behind runs[0] (numpy; keys dropped)."""
  d = jax.jit(lambda k: simulator.sample_draws(k, BATCH, CFG))(jax.random.key(0))
  return jax.tree.map(np.asarray, d._replace(mask_key=None, texture_key=None))


@pytest.fixture(scope="module")
def runs(simulate_jit, data):
  """Outputs for a few keys (numpy), computed once."""
  images, textures = data
  out = {}
  for seed in (0, 1, 2):
    sim, details = simulate_jit(jax.random.key(seed), images, textures)
    out[seed] = (jax.tree.map(np.asarray, sim), jax.tree.map(np.asarray, details))
  return out


def test_shapes_dtypes_ranges(runs):
  for sim, details in runs.values():
    assert sim.target.shape == (BATCH, HEIGHT, WIDTH, 3)
    assert sim.augmented.shape == (BATCH, HEIGHT, WIDTH, 3)
    assert sim.mask.shape == (BATCH, HEIGHT, WIDTH, 1)
    assert sim.has_anomaly.shape == (BATCH,)
    for x in sim:
      assert x.dtype == np.float32
    assert 0 <= sim.target.min() and sim.target.max() <= 1
    assert 0 <= sim.augmented.min() and sim.augmented.max() <= 1
    assert set(np.unique(sim.mask)) <= {0.0, 1.0}
    assert details.augmenters.shape == (BATCH, 3)


def test_branches_and_blend(runs, data):
  images, _ = data
  seen = {"rotated": 0, "clean": 0, "anomaly": 0, "empty": 0}
  for sim, details in runs.values():
    for b in range(BATCH):
      target, augmented, mask = sim.target[b], sim.augmented[b], sim.mask[b]
      if details.rotated[b]:
        seen["rotated"] += 1
      else:
        np.testing.assert_allclose(target, images[b] / 255.0, atol=1e-7)
      if not details.anomaly_branch[b]:
        seen["clean"] += 1
        np.testing.assert_array_equal(augmented, target)
        assert mask.max() == 0 and sim.has_anomaly[b] == 0
        continue
      seen["anomaly"] += 1
      seen["empty"] += mask.max() == 0
      assert sim.has_anomaly[b] == float(mask.max() > 0)
      m = mask[..., 0] > 0
      # Unmasked pixels are the target, bit for bit.
      np.testing.assert_array_equal(augmented[~m], target[~m])
      # Masked: (1 - beta) A + beta I, with A the augmented texture in [0, 1].
      beta = details.beta[b]
      expected = (1 - beta) * details.texture[b][m] / 255 + beta * target[m]
      np.testing.assert_allclose(augmented[m], expected, atol=2e-6)
      assert 0 <= beta < CFG.beta_max
  assert seen["rotated"] > 0 and seen["clean"] > 0 and seen["anomaly"] > seen["empty"]


def test_rotated_target_matches_scipy(runs, data, draws):
  images, _ = data
  sim, details = runs[0]
  angles = draws.angle
  rotated = np.nonzero(details.rotated)[0]
  assert rotated.size > 0
  for b in rotated:
    expected = ndimage.rotate(images[b] / 255.0, angles[b], axes=(1, 0), order=1,
                              reshape=False, mode="grid-constant", cval=0)
    np.testing.assert_allclose(sim.target[b], expected, atol=1e-5)


def test_augmenters_distinct_and_texture_changed(runs, data):
  _, textures = data
  for sim, details in runs.values():
    for b in range(BATCH):
      assert len(set(details.augmenters[b])) == 3
      assert np.all(details.augmenters[b] >= 0) and np.all(details.augmenters[b] < 10)
      if details.anomaly_branch[b]:
        assert not np.array_equal(details.texture[b], textures[b])
      else:
        np.testing.assert_array_equal(details.texture[b], textures[b])
      assert np.array_equal(details.texture[b], np.round(details.texture[b]))


def test_same_key_same_output_different_keys_differ(simulate_jit, runs, data):
  images, textures = data
  sim, _ = simulate_jit(jax.random.key(0), images, textures)
  for got, expected in zip(sim, runs[0][0]):
    np.testing.assert_array_equal(np.asarray(got), expected)
  assert not np.array_equal(runs[0][0].augmented, runs[1][0].augmented)
  assert not np.array_equal(runs[1][0].augmented, runs[2][0].augmented)
  # Each sample has its own key: identical inputs in a batch give different draws.
  same_images = np.broadcast_to(images[:1], images.shape)
  same_textures = np.broadcast_to(textures[:1], textures.shape)
  sim, details = simulate_jit(jax.random.key(9), same_images, same_textures)
  assert len({tuple(row) for row in np.asarray(details.augmenters)}) > BATCH // 2
  assert len({float(x) for x in np.asarray(details.beta)}) == BATCH


def test_no_recompilation_and_vmap(simulate_jit, runs, data):
  images, textures = data
  before = simulate_jit._cache_size()
  for seed in (3, 4, 5):
    simulate_jit(jax.random.key(seed), images, textures)
  assert simulate_jit._cache_size() == before
  # vmap over a leading axis (e.g. devices) of keys and batches, with the vectorised mode:
  # the same values as the per-sample loop of the default mode on CPU.
  cfg = dataclasses.replace(simulator.SimulatorConfig.from_config(CFG), batching="vmap")
  stacked = jax.jit(jax.vmap(lambda k, i, t: simulator.simulate(k, i, t, cfg)))
  keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
  got = stacked(keys, jnp.stack([images] * 2), jnp.stack([textures] * 2))
  for n, seed in enumerate((0, 1)):
    expected = runs[seed][0]
    np.testing.assert_array_equal(np.asarray(got.mask[n]), expected.mask)
    np.testing.assert_array_equal(np.asarray(got.has_anomaly[n]), expected.has_anomaly)
    np.testing.assert_allclose(np.asarray(got.target[n]), expected.target, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.augmented[n]), expected.augmented, atol=1e-5)
  stacked(jnp.stack([jax.random.key(7), jax.random.key(8)]), jnp.stack([images] * 2),
          jnp.stack([textures] * 2))
  assert stacked._cache_size() == 1


# Without texture augmenters the simulator compiles in a fraction of the time; the tests of
# input conversion and sharding below do not depend on them.
REDUCED = dataclasses.replace(simulator.SimulatorConfig.from_config(CFG), num_augmenters=0)


@pytest.fixture(scope="module")
def reduced_run(data):
  images, textures = data
  return jax.tree.map(np.asarray, jax.jit(
      lambda k, i, t: simulator.simulate_with_details(k, i, t, REDUCED))(
          jax.random.key(0), images, textures))


def test_float_inputs_equal_uint8_inputs(reduced_run, data):
  images, textures = data
  sim, details = jax.jit(lambda k, i, t: simulator.simulate_with_details(k, i, t, REDUCED))(
      jax.random.key(0), jnp.asarray(images / 255.0, jnp.float32),
      jnp.asarray(textures / 255.0, jnp.float32))
  expected, expected_details = reduced_run
  # Float textures in [0, 1] are put back on the uint8 grid the augmenters work on.
  np.testing.assert_array_equal(np.asarray(details.texture), expected_details.texture)
  np.testing.assert_array_equal(np.asarray(sim.mask), expected.mask)
  np.testing.assert_allclose(np.asarray(sim.augmented), expected.augmented, atol=1e-6)


# --- statistics of the sampler at 256 x 256 (DRAEM_SPEC section 4) --------------------------


def test_sampler_statistics_at_256():
  """The reference sampler measured over 3,000 draws: 5.6% of anomaly-branch masks empty, mean
  coverage 4.9% (median 4.6%), P(has_anomaly) ~ 0.47; kx, ky uniform on 0..5.

  The simulator's masks at 256 x 256 come from its draws (`sample_draws`) through
  `perlin_mask` in the anomaly branch (test_simulate_masks_and_draws_match_simulate checks
  that against `simulate`). The mask does not depend on the branch, so the mask statistics
  use all n = 3,000 draws (as many as the reference's measurement). Standard errors: 0.42%
  for the empty rate (tolerance 1.5% = 3.6 sigma), about 0.08% for the mean coverage
  (per-mask spread about 4%; tolerance 0.7% = 9 sigma), 0.91% for P(has_anomaly) (tolerance
  3% = 3.3 sigma), 0.68% for each of the 12 kx / ky frequencies (tolerance 4.5 sigma each, so
  a faithful sampler fails with probability below 1e-4 under any seed, Bonferroni).
  Resolutions 2^0..2^4 instead of 2^0..2^5 (kx = 5 never drawn) or a threshold of 0.45
  instead of 0.5 (mean coverage 6.9%) fail clearly.
  """
  n, chunk = 3000, 500
  cfg = simulator.SimulatorConfig.from_config(CFG)

  @jax.jit
  def stats(key):
    draws = simulator.sample_draws(key, chunk, cfg)
    masks = jax.lax.map(lambda d: simulator.perlin_mask(d[0], d[1], (256, 256), cfg),
                        (draws.mask_key, draws.perlin_log2))
    return jnp.mean(masks, axis=(1, 2, 3)), draws.anomaly_branch, draws.perlin_log2

  parts = [jax.tree.map(np.asarray, stats(jax.random.key(1234 + s))) for s in range(n // chunk)]
  coverage, branch, log2 = (np.concatenate(x) for x in zip(*parts))
  has = branch & (coverage > 0)
  assert abs(np.mean(coverage == 0) - 0.056) <= 0.015, np.mean(coverage == 0)
  assert abs(coverage.mean() - 0.049) <= 0.007, coverage.mean()
  assert abs(np.median(coverage) - 0.046) <= 0.007, np.median(coverage)
  assert abs(has.mean() - 0.47) <= 0.03, has.mean()
  sigma = np.sqrt(1 / 6 * 5 / 6 / n)
  for axis in range(2):
    freq = np.bincount(log2[:, axis], minlength=6) / n
    assert freq.size == 6
    np.testing.assert_allclose(freq, 1 / 6, atol=4.5 * sigma)


def test_simulate_masks_and_draws_match_simulate(runs, draws):
  sim, details = runs[0]
  mask, has = jax.jit(lambda k: simulator.simulate_masks(k, BATCH, (HEIGHT, WIDTH), CFG))(
      jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(mask), sim.mask)
  np.testing.assert_array_equal(np.asarray(has), sim.has_anomaly)
  for name in ("rotated", "anomaly_branch", "perlin_log2", "augmenters", "beta"):
    np.testing.assert_array_equal(getattr(draws, name), getattr(details, name))


# --- configuration ----------------------------------------------------------------------------


def test_config_errors():
  for field, value in (("rotate_prob", 1.5), ("anomaly_prob", -0.1), ("beta_max", 2.0),
                       ("num_augmenters", 11), ("perlin_max_log2", 11), ("perlin_min_log2", 6),
                       ("batching", "pmap"), ("rotate_prob", "high"), ("num_augmenters", 2.5)):
    cfg = mvtec.get_config().simulator.to_dict()
    cfg[field] = value
    with pytest.raises(ConfigError, match=field):
      simulator.SimulatorConfig.from_config(cfg)
  cfg = mvtec.get_config().simulator.to_dict()
  cfg["rotate_probability"] = 0.3
  with pytest.raises(ConfigError, match="rotate_probability"):
    simulator.SimulatorConfig.from_config(cfg)
  parsed = simulator.SimulatorConfig.from_config(CFG)
  assert (parsed.rotate_prob, parsed.rotate_max_deg, parsed.anomaly_prob) == (0.3, 90.0, 0.5)
  assert (parsed.perlin_min_log2, parsed.perlin_max_log2) == (0, 5)
  assert (parsed.perlin_rotate_max_deg, parsed.perlin_threshold, parsed.beta_max) == (
      90.0, 0.5, 0.8)
  assert (parsed.num_augmenters, parsed.texture_rotate_max_deg) == (3, 45.0)
  assert simulator.resolve_batching("auto") == "map"  # The test backend is the CPU.
  assert len(augment.AUGMENTER_NAMES) == 10


def test_draws_follow_config():
  """Over n = 20,000 samples (4.5 sigma: 0.015 for rotate_prob 0.3, 0.016 for anomaly_prob 0.5,
  0.012 for beta's mean 0.4, 0.0095 for an augmenter's frequency 0.1 at a position)."""
  n = 20000
  draws = jax.jit(lambda k: simulator.sample_draws(k, n, CFG))(jax.random.key(0))
  draws = draws._replace(mask_key=None, texture_key=None)
  draws = jax.tree.map(np.asarray, draws)
  assert abs(draws.rotated.mean() - 0.3) <= 0.015
  assert abs(draws.anomaly_branch.mean() - 0.5) <= 0.016
  assert -90 <= draws.angle.min() < -89 and 89 < draws.angle.max() <= 90
  assert 0 <= draws.beta.min() < 0.01 and 0.79 < draws.beta.max() < 0.8
  assert abs(draws.beta.mean() - 0.4) <= 0.012
  assert all(len(set(row)) == 3 for row in draws.augmenters)
  for position in range(3):
    np.testing.assert_allclose(np.bincount(draws.augmenters[:, position], minlength=10) / n,
                               0.1, atol=0.0095)
  assert set(np.unique(draws.perlin_log2)) == set(range(6))


@pytest.mark.parametrize("explicit", [False, True])
def test_sharded_batch(reduced_run, data, explicit):
  """Under the train step's data-parallel jit: draem_jax.training.parallel's mesh (Auto axes, the
  per-sample loop) and an Explicit-axes mesh (where the loop cannot run over the sharded
  axis and the simulator vectorises instead); 4 virtual CPU devices (tests/conftest.py)."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec  # pylint: disable=C0415
  from draem_jax.training import parallel  # pylint: disable=C0415
  images, textures = data
  if explicit:
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
  else:
    mesh = parallel.make_mesh()
  batch = NamedSharding(mesh, PartitionSpec("data"))
  fn = jax.jit(lambda k, i, t: simulator.simulate(k, i, t, REDUCED),
               in_shardings=(NamedSharding(mesh, PartitionSpec()), batch, batch),
               out_shardings=batch)
  got = fn(jax.random.key(0), jax.device_put(images, batch), jax.device_put(textures, batch))
  assert got.augmented.sharding.spec[0] == "data"
  expected = reduced_run[0]
  np.testing.assert_array_equal(np.asarray(got.mask), expected.mask)
  np.testing.assert_allclose(np.asarray(got.augmented), expected.augmented, atol=1e-5)
