"""Scoring whole images and overlapping tiles (eval.tile_size) and the scaled mean filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draem_jax import models
from draem_jax.data import windows
from draem_jax.evaluation import evaluator


def test_tile_grid_covers_the_image_with_the_requested_overlap():
  grid = windows.tile_grid((64, 160), (32, 64), 0.25)
  tops, lefts = sorted(set(grid[:, 0])), sorted(set(grid[:, 1]))
  assert tops == [0, 24, 32] and lefts == [0, 48, 96]  # Strides 24 and 48; last flush.
  covered = np.zeros((64, 160), int)
  for top, left in grid:
    covered[top:top + 32, left:left + 64] += 1
  assert covered.min() >= 1
  np.testing.assert_array_equal(windows.tile_grid((64, 64), (64, 64), 0.5), [[0, 0]])
  assert len(windows.tile_grid((96, 96), (32, 32), 0.0)) == 9  # No overlap: 3 x 3.


@pytest.mark.parametrize("blend", windows.BLENDS)
@pytest.mark.parametrize("unroll", [False, True])
def test_tiles_equal_the_whole_image_for_a_pixelwise_map(blend, unroll):
  # A map that depends on each pixel alone is the same whether computed on a tile or on the
  # whole image: any correct blend of the tiles gives the whole-image map back.
  images = jax.random.uniform(jax.random.key(0), (2, 64, 96, 3))
  pixelwise = lambda x: jnp.tanh(x[..., 0] * 3.0 - x[..., 1])
  tiled = windows.tiled_map(pixelwise, images, (32, 32), 0.25, blend, unroll)
  np.testing.assert_allclose(tiled, pixelwise(images), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_model():
  model = models.DRAEM(4, 4)
  return model, models.init_variables(model, jax.random.key(0), (1, 64, 96, 3))


def test_one_tile_the_size_of_the_image_is_the_whole_image_bit_for_bit(tiny_model):
  model, variables = tiny_model
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3)).astype(np.uint8)
  whole = jax.jit(evaluator.make_predict_fn(model, 5))(variables, images)
  tiled = jax.jit(evaluator.make_predict_fn(model, 5, tile_size=(64, 96)))(variables, images)
  for a, b in zip(whole, tiled):
    np.testing.assert_array_equal(a, b)


def test_tiles_are_the_mean_of_the_model_on_each_tile(tiny_model):
  # The real network: every pixel of the tiled map is the mean of the network's maps of the
  # tiles that cover it (computed here tile by tile, independently of the blend code).
  model, variables = tiny_model
  images = np.random.default_rng(1).random((2, 64, 96, 3)).astype(np.float32)
  predict = evaluator.make_predict_fn(model, 5, tile_size=32, tile_overlap=0.25)
  maps, _ = jax.jit(predict)(variables, images)
  whole = jax.jit(evaluator.make_predict_fn(model, 5))
  total = np.zeros((2, 64, 96))
  count = np.zeros((64, 96))
  for top, left in windows.tile_grid((64, 96), (32, 32), 0.25):
    tile_map, _ = whole(variables, images[:, top:top + 32, left:left + 32])
    total[:, top:top + 32, left:left + 32] += np.asarray(tile_map)
    count[top:top + 32, left:left + 32] += 1
  np.testing.assert_allclose(maps, total / count, atol=1e-6)
  # And close to the whole image's map (the tiles see less context near their borders).
  whole_map, _ = whole(variables, images)
  assert np.abs(np.asarray(maps) - np.asarray(whole_map)).mean() < 1e-3


def test_mean_filter_fraction_scales_with_the_short_side(tiny_model):
  paper = 21 / 256
  assert evaluator.filter_size_for((256, 256), 21, paper) == 21  # The paper's size at 256.
  assert evaluator.filter_size_for((64, 64), 21, paper) == 5
  assert evaluator.filter_size_for((64, 512), 21, paper) == 5  # The short side decides.
  assert evaluator.filter_size_for((1024, 1024), 21, paper) == 85
  assert evaluator.filter_size_for((32, 32), 21, paper) == 3
  assert evaluator.filter_size_for((64, 64), 21, 0.0) == 21  # 0 = eval.mean_filter_size.
  model, variables = tiny_model
  images = np.random.default_rng(2).random((2, 64, 96, 3)).astype(np.float32)
  maps, scores = jax.jit(evaluator.make_predict_fn(model, 21, mean_filter_fraction=paper))(
      variables, images)
  np.testing.assert_allclose(scores, evaluator.mean_filter_max(maps, 5), rtol=1e-6)


def test_configs_keep_the_papers_filter_share():
  """The paper's 21 at 256 (DRAEM_SPEC section 5); the 64x64 CPU configs 21/256 of that: 5."""
  from configs import folder_cpu, mvtec, mvtec_cpu, mvtec_cpu_crops  # pylint: disable=g-import-not-at-top

  def k_of(config, map_hw):
    return evaluator.filter_size_for(map_hw, config.eval.mean_filter_size,
                                     config.eval.mean_filter_fraction)

  assert k_of(mvtec.get_config(), (256, 256)) == 21
  assert mvtec.get_config().eval.mean_filter_fraction == 0  # Fixed 21, whatever the size.
  assert k_of(mvtec_cpu.get_config(), (64, 64)) == 5
  assert k_of(folder_cpu.get_config("/data/parts"), (64, 64)) == 5
  assert k_of(mvtec_cpu_crops.get_config(), (256, 256)) == 21
