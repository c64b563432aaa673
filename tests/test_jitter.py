"""The simulator's photometric jitter (config.simulator.jitter_*)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from configs import mvtec
from draem_jax.simulation import simulator
from draem_jax.errors import ConfigError

BATCH, SIZE = 6, 32
RANGES = {"jitter_brightness": 0.2, "jitter_contrast": 0.15, "jitter_gamma": 0.1}


def _config(**fields) -> simulator.SimulatorConfig:
  return dataclasses.replace(simulator.SimulatorConfig.from_config(mvtec.get_config().simulator),
                             **fields)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  textures = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
  return images, textures


@functools.lru_cache(maxsize=None)
def _jitted(cfg: simulator.SimulatorConfig):
  return jax.jit(lambda k, i, t: simulator.simulate(k, i, t, cfg))


def _run(cfg, key, images, textures):
  return jax.tree.map(np.asarray, _jitted(cfg)(key, images, textures))


def _numpy_jitter(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """The jitter's definition in float64 numpy, image by image."""
  out = []
  for x, (b, c, g) in zip(images.astype(np.float64) / 255.0, factors.astype(np.float64)):
    y = x**g
    m = y.mean()
    out.append(np.clip(b * (m + c * (y - m)), 0.0, 1.0))
  return np.stack(out)


def test_off_is_the_simulator_without_jitter(data):
  """Off: no jitter draw or image change; on: the jitter is the only difference."""
  images, textures = data
  key = jax.random.key(3)
  off = _run(_config(), key, images, textures)
  assert not _config().jitter and _config(jitter_gamma=0.1).jitter
  on = _run(_config(**RANGES), key, images, textures)
  # The same draws with the jitter replaced by the identity give the off outputs bit for bit,
  # so turning the jitter on changes nothing but the clean image's photometry.
  real = simulator.photometric_jitter
  try:
    simulator.photometric_jitter = lambda x, f: x
    identity = jax.tree.map(np.asarray, jax.jit(
        lambda k, i, t: simulator.simulate(k, i, t, _config(**RANGES)))(key, images, textures))
  finally:
    simulator.photometric_jitter = real
  for a, b in zip(off, identity):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(on.mask, off.mask)
  np.testing.assert_array_equal(on.has_anomaly, off.has_anomaly)
  assert np.abs(on.target - off.target).max() > 0.01


@pytest.mark.parametrize("batching", ["map", "vmap"])
def test_identical_on_input_and_target(data, batching):
  images, textures = data
  key = jax.random.key(5)
  factors = np.asarray(simulator.jitter_factors(key, BATCH, _config(**RANGES)))
  expected = _numpy_jitter(images, factors)
  # No rotation and no anomaly: input and target are both the jittered clean image.
  clean = _run(_config(rotate_prob=0.0, anomaly_prob=0.0, batching=batching, **RANGES), key,
               images, textures)
  np.testing.assert_allclose(clean.target, expected, atol=2e-6)
  np.testing.assert_array_equal(clean.augmented, clean.target)
  # Always an anomaly: outside the mask the input is the jittered target exactly.
  anomalous = _run(_config(rotate_prob=0.0, anomaly_prob=1.0, batching=batching, **RANGES), key,
                   images, textures)
  np.testing.assert_allclose(anomalous.target, expected, atol=2e-6)
  outside = np.broadcast_to(anomalous.mask == 0, anomalous.target.shape)
  assert outside.mean() > 0.2 and (~outside).any()
  np.testing.assert_array_equal(anomalous.augmented[outside], anomalous.target[outside])


def test_factors_within_ranges_and_deterministic():
  cfg = _config(**RANGES)
  factors = np.asarray(simulator.jitter_factors(jax.random.key(0), 4000, cfg))
  for column, name in enumerate(RANGES):
    r = RANGES[name]
    f = factors[:, column]
    assert f.min() >= 1 - r and f.max() <= 1 + r, name
    assert f.min() < 1 - 0.95 * r and f.max() > 1 + 0.95 * r, name  # Fills the range.
    assert abs(f.mean() - 1.0) < 0.02 * r / 0.1, name  # Uniform about 1 (4.5 sigma).
  np.testing.assert_array_equal(
      factors, np.asarray(simulator.jitter_factors(jax.random.key(0), 4000, cfg)))
  assert not np.array_equal(
      factors, np.asarray(simulator.jitter_factors(jax.random.key(1), 4000, cfg)))
  only_gamma = np.asarray(simulator.jitter_factors(jax.random.key(0), 8, _config(jitter_gamma=0.1)))
  np.testing.assert_array_equal(only_gamma[:, :2], 1.0)  # A range of 0 is exactly factor 1.


def test_same_key_same_draws_whether_looped_or_vectorised(data):
  """The draws belong to the key and the sample, not to how the batch is computed: the loop
  over samples ("map", CPU) and the vectorised batch ("vmap", accelerators) give the same
  jittered images, masks and anomalies; another key gives others."""
  images, textures = data
  looped = _run(_config(batching="map", **RANGES), jax.random.key(9), images, textures)
  vectorised = _run(_config(batching="vmap", **RANGES), jax.random.key(9), images, textures)
  np.testing.assert_array_equal(looped.has_anomaly, vectorised.has_anomaly)
  assert 0 < looped.has_anomaly.sum() < BATCH
  # Masks are thresholded noise: a value at the threshold may round either way.
  assert np.mean(looped.mask != vectorised.mask) < 1e-3
  np.testing.assert_allclose(looped.target, vectorised.target, atol=1e-5)
  np.testing.assert_allclose(looped.augmented, vectorised.augmented, atol=1e-3)
  other = _run(_config(batching="map", **RANGES), jax.random.key(10), images, textures)
  assert not np.array_equal(looped.target, other.target)


def test_config_errors():
  for name in RANGES:
    for value in (-0.1, 1.0, "dark"):
      with pytest.raises(ConfigError, match=name):
        _config(**{name: value})
  cfg = mvtec.get_config().simulator.to_dict()
  assert all(cfg[name] == 0.0 for name in RANGES)  # Off by default (the paper).
