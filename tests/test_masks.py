"""The simulator's ablation switches (mask_shape, texture_source, augment_textures,
random_opacity): each changes what it should and nothing else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvtec
from draem_jax.errors import ConfigError
from draem_jax.simulation import masks
from draem_jax.simulation import simulator

BATCH, HEIGHT, WIDTH = 12, 36, 52


def _cfg(**changes):
  cfg = mvtec.get_config().simulator
  cfg.batching = "map"
  cfg.anomaly_prob = 0.9  # Most samples anomalous: more cases per run.
  for name, value in changes.items():
    cfg[name] = value
  return simulator.SimulatorConfig.from_config(cfg)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=np.uint8)
  textures = rng.integers(0, 256, (BATCH, HEIGHT, WIDTH, 3), dtype=np.uint8)
  return images, textures


def _run(data, **changes):
  images, textures = data
  fn = jax.jit(simulator.simulate_with_details, static_argnums=3)
  out = fn(jax.random.key(5), images, textures, _cfg(**changes))
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def default(data):
  return _run(data)


def _blend(target, source, mask, beta):
  beta = beta[:, None, None, None]
  return np.clip(target * (1 - mask) + (1 - beta) * source * mask + beta * target * mask, 0, 1)


def _numpy_rectangles(key, shape):
  """An independent loop over the rectangles from the same uniform draws."""
  h, w = shape
  u = np.asarray(jax.random.uniform(key, (1 + 4 * masks.RECT_MAX_COUNT,), jnp.float32))
  mask = np.zeros(shape, np.float32)
  for i in range(1 + int(u[0] * masks.RECT_MAX_COUNT)):
    sy, sx, top, left = u[1 + 4 * i:5 + 4 * i]
    lo, hi = np.float32(masks.RECT_SIDE_MIN), np.float32(masks.RECT_SIDE_MAX)
    rh = int(min(max(np.round((lo + (hi - lo) * sy) * np.float32(h)), 1), h))
    rw = int(min(max(np.round((lo + (hi - lo) * sx) * np.float32(w)), 1), w))
    y, x = int(top * (h - rh + 1)), int(left * (w - rw + 1))
    mask[y:y + rh, x:x + rw] = 1
  return mask


def test_rectangle_mask_is_union_of_rectangles():
  for seed in range(20):
    key = jax.random.key(seed)
    mask = np.asarray(masks.rectangle_mask(key, (HEIGHT, WIDTH)))[..., 0]
    np.testing.assert_array_equal(mask, _numpy_rectangles(key, (HEIGHT, WIDTH)))
    assert mask.any()


def test_rectangle_coverage_matches_perlin_at_256():
  """Mean coverage of 3,000 rectangle masks at 256 x 256 is Perlin's 4.9% (DRAEM_SPEC 4)
  within 0.3% (the per-mask spread is about 3%: standard error 0.06%)."""
  keys = jax.random.split(jax.random.key(11), 3000)
  coverage = np.asarray(jax.jit(lambda ks: jax.lax.map(  # One mask at a time: small memory.
      lambda k: jnp.mean(masks.rectangle_mask(k, (256, 256))), ks))(keys))
  assert coverage.min() > 0
  assert abs(coverage.mean() - 0.049) <= 0.003, coverage.mean()
  assert abs(np.median(coverage) - 0.046) <= 0.006, np.median(coverage)


def test_rectangles_change_only_the_mask(data, default):
  images, _ = data
  sim, details = _run(data, mask_shape="rectangles")
  ref_sim, ref_details = default
  np.testing.assert_array_equal(sim.target, ref_sim.target)
  for name in ("rotated", "anomaly_branch", "augmenters", "beta"):
    np.testing.assert_array_equal(getattr(details, name), getattr(ref_details, name))
  branch = details.anomaly_branch
  assert branch.sum() >= 6
  np.testing.assert_array_equal(sim.has_anomaly, branch.astype(np.float32))  # Never empty.
  assert not np.array_equal(sim.mask, ref_sim.mask)
  np.testing.assert_allclose(sim.augmented,
                             _blend(sim.target, details.texture / 255.0, sim.mask, details.beta),
                             atol=1e-6)
  draws = simulator.sample_draws(jax.random.key(5), BATCH, _cfg())
  for b in np.flatnonzero(branch):
    np.testing.assert_array_equal(sim.mask[b, ..., 0],
                                  _numpy_rectangles(draws.mask_key[b], (HEIGHT, WIDTH)))
  mask, has = simulator.simulate_masks(jax.random.key(5), BATCH, (HEIGHT, WIDTH),
                                       _cfg(mask_shape="rectangles"))
  np.testing.assert_array_equal(np.asarray(mask), sim.mask)


def test_color_fills_each_anomaly_with_one_colour(data, default):
  sim, details = _run(data, texture_source="color")
  ref_sim, ref_details = default
  np.testing.assert_array_equal(sim.mask, ref_sim.mask)
  np.testing.assert_array_equal(details.beta, ref_details.beta)
  for b in np.flatnonzero(details.anomaly_branch):
    colour = details.texture[b, 0, 0]
    np.testing.assert_array_equal(details.texture[b], np.broadcast_to(colour, (HEIGHT, WIDTH, 3)))
    np.testing.assert_array_equal(colour, np.round(colour))
    assert 0 <= colour.min() and colour.max() <= 255
  colours = {tuple(details.texture[b, 0, 0]) for b in np.flatnonzero(details.anomaly_branch)}
  assert len(colours) == details.anomaly_branch.sum()  # One colour per sample.
  np.testing.assert_allclose(sim.augmented,
                             _blend(sim.target, details.texture / 255.0, sim.mask, details.beta),
                             atol=1e-6)


def test_no_random_opacity_pastes_the_texture(data, default):
  sim, details = _run(data, random_opacity=False)
  ref_sim, ref_details = default
  assert not details.beta.any()
  np.testing.assert_array_equal(sim.mask, ref_sim.mask)
  np.testing.assert_array_equal(details.texture, ref_details.texture)
  inside = sim.mask[..., 0] > 0
  np.testing.assert_allclose(sim.augmented[inside], details.texture[inside] / 255.0, atol=1e-6)
  np.testing.assert_array_equal(sim.augmented[~inside], sim.target[~inside])


def test_no_augmenters_use_the_texture_as_read(data, default):
  _, textures = data
  sim, details = _run(data, augment_textures=False)
  ref_sim, ref_details = default
  np.testing.assert_array_equal(sim.mask, ref_sim.mask)
  np.testing.assert_array_equal(details.beta, ref_details.beta)
  np.testing.assert_array_equal(details.texture, textures.astype(np.float32))
  assert not np.array_equal(details.texture, ref_details.texture)


def test_switch_errors():
  for name, value in (("mask_shape", "circles"), ("texture_source", "imagenet"),
                      ("augment_textures", "false"), ("random_opacity", 2)):
    cfg = mvtec.get_config().simulator.to_dict()
    cfg[name] = value
    with pytest.raises(ConfigError, match=f"simulator.{name}"):
      simulator.SimulatorConfig.from_config(cfg)
