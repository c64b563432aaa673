"""The antialiased resize against Pillow, and the preprocessing geometry (draem_jax/image_io.py)."""

import numpy as np
import pytest
from PIL import Image

from draem_jax import image_io
from draem_jax.image_io import Preprocess


def _pil_resize(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Independent reference: Pillow's Image.resize with BILINEAR (antialiased when shrinking)."""
  mode = "F" if array.dtype == np.float32 else None
  image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
  return np.asarray(image.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("in_hw,out_hw", [
    ((900, 900), (64, 64)),      # MVTec-like shrink by 14.
    ((500, 1250), (96, 256)),    # Rectangular, both axes shrink by different factors.
    ((131, 257), (32, 64)),      # Odd sizes, non-integer factors.
    ((37, 53), (64, 96)),        # Enlarging.
    ((255, 17), (7, 33)),        # One axis shrinks, the other grows.
])
@pytest.mark.parametrize("channels", [3, None])
def test_resize_antialiased_matches_pillow_uint8(in_hw, out_hw, channels):
  rng = np.random.default_rng(sum(in_hw) + (channels or 0))
  shape = in_hw + ((channels,) if channels else ())
  # Noise is the hardest case (every tap matters); a smooth ramp adds large flat values.
  ramp = np.linspace(0, 200, in_hw[1])[None, :] + np.linspace(0, 55, in_hw[0])[:, None]
  if channels:
    ramp = ramp[..., None]
  for array in (rng.integers(0, 256, shape).astype(np.uint8),
                np.broadcast_to(ramp, shape).round().astype(np.uint8)):
    ours = image_io.resize_antialiased(array, out_hw)
    assert ours.dtype == np.uint8 and ours.shape == out_hw + shape[2:]
    # Pillow rounds to 8 bits between its two passes, this resize only at the end.
    diff = np.abs(ours.astype(int) - _pil_resize(array, out_hw).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.25


def test_resize_antialiased_float_matches_pillow():
  array = np.random.default_rng(1).random((300, 200)).astype(np.float32)
  for out_hw in ((96, 64), (37, 411)):
    np.testing.assert_allclose(image_io.resize_antialiased(array, out_hw),
                               _pil_resize(array, out_hw), atol=1e-5)


def test_antialiased_shrink_keeps_a_small_defect_that_the_reference_resize_skips():
  image = np.full((896, 896), 100, np.uint8)
  image[303:309, 303:309] = 255  # 6 px between the reference's taps (14 d + 6, 14 d + 7).
  reference = image_io.resize_bilinear(image, 64)
  antialiased = image_io.resize_antialiased(image, 64)
  assert reference.max() == 100  # Falls between the reference's two taps.
  assert antialiased.max() > 100


def test_cpu_configs_shrink_with_antialiasing_and_the_paper_config_does_not():
  """The 64x64 CPU configs average every pixel (bench/RESULTS.md, "Antialiased shrinking at
  7,200 steps"); the paper's config keeps the reference's bilinear resize."""
  from configs import folder, folder_cpu, mvtec, mvtec_cpu  # pylint: disable=g-import-not-at-top
  assert mvtec_cpu.get_config().data.resize_antialias is True
  assert folder_cpu.get_config("/data/parts").data.resize_antialias is True
  assert mvtec.get_config().data.resize_antialias is False
  assert folder.get_config("/data/parts").data.resize_antialias is False
  for config in (mvtec_cpu.get_config(), folder_cpu.get_config("/data/parts")):
    pre = Preprocess.from_config(config.data)
    image = np.zeros((900, 900, 3), np.uint8)
    image[448:452, 448:452] = 255  # A 4x4 px defect: 16 of an output pixel's 14x14 footprint.
    np.testing.assert_array_equal(pre.image(image), image_io.resize_antialiased(image, 64))


def test_stretch_without_antialias_is_the_reference_resize_bit_for_bit():
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (133, 71, 3)).astype(np.uint8)
  mask = (rng.random((133, 71)) > 0.7).astype(np.uint8)
  pre = Preprocess(64)
  assert pre.size == (64, 64) and pre.mode == "stretch" and not pre.antialias
  np.testing.assert_array_equal(pre.image(image), image_io.resize_bilinear(image, 64))
  np.testing.assert_array_equal(pre.mask(mask),
                                image_io.resize_bilinear(mask.astype(np.float32), 64))
  anomaly_map = rng.random((64, 64)).astype(np.float32)
  np.testing.assert_array_equal(pre.map_back(anomaly_map, (133, 71)),
                                image_io.resize_bilinear(anomaly_map, (133, 71)))
  anti = Preprocess((64, 32), antialias=True)
  np.testing.assert_array_equal(anti.image(image), image_io.resize_antialiased(image, (64, 32)))


def test_fit_long_side_pads_and_maps_back():
  image = np.full((50, 100, 3), 200, np.uint8)
  pre = Preprocess((64, 64), "fit_long_side")
  where = pre.placement((50, 100))
  assert where.resized == (32, 64) and (where.top, where.left) == (16, 0)
  out = pre.image(image)
  assert out.shape == (64, 64, 3)
  assert (out[:16] == 0).all() and (out[48:] == 0).all() and (out[16:48] == 200).all()
  # A map that is 1 on the image and 0 on the padding maps back to ones everywhere.
  anomaly_map = np.zeros((64, 64), np.float32)
  anomaly_map[16:48] = 1.0
  back = pre.map_back(anomaly_map, (50, 100))
  assert back.shape == (50, 100)
  np.testing.assert_allclose(back, 1.0)
  # A mask is placed exactly like its image.
  np.testing.assert_array_equal(pre.mask(np.ones((50, 100), np.uint8)) > 0, out[..., 0] > 0)


def test_fit_short_side_crops_the_centre_and_maps_back():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (100, 50, 3)).astype(np.uint8)
  pre = Preprocess((64, 64), "fit_short_side", antialias=True)
  where = pre.placement((100, 50))
  assert where.resized == (128, 64) and (where.top, where.left) == (-32, 0)
  np.testing.assert_array_equal(pre.image(image),
                                image_io.resize_antialiased(image, (128, 64))[32:96])
  back = pre.map_back(np.ones((64, 64), np.float32), (100, 50))
  assert back.shape == (100, 50)
  # The centre was scored, the cut-off ends read 0.
  assert back[50, 25] == 1.0 and back[0, 25] == 0.0 and back[-1, 25] == 0.0


@pytest.mark.parametrize("mode", image_io.RESIZE_MODES)
def test_rectangular_frame_and_odd_inputs(mode):
  pre = Preprocess((32, 96), mode)
  for hw in ((31, 200), (200, 31), (33, 97), (32, 96)):
    image = np.random.default_rng(hw[0]).integers(0, 256, hw + (3,)).astype(np.uint8)
    assert pre.image(image).shape == (32, 96, 3)
    assert pre.mask(np.ones(hw, np.uint8)).shape == (32, 96)
    assert pre.map_back(np.zeros((32, 96), np.float32), hw).shape == hw


def test_metadata_round_trip_and_errors():
  pre = Preprocess((64, 128), "fit_short_side", True)
  meta = pre.to_metadata()
  assert meta == {"size": [64, 128], "mode": "fit_short_side", "antialias": True}
  assert Preprocess.from_metadata(meta) == pre
  with pytest.raises(ValueError, match="data.resize"):
    Preprocess(64, "squash")
  with pytest.raises(ValueError, match="data.image_size"):
    Preprocess((64, 64, 3))
