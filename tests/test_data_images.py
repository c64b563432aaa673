"""Decoding to RGB and the OpenCV-style bilinear resize (draem_jax/data/images.py)."""

import numpy as np
import pytest
from PIL import Image

from draem_jax.data import images
from draem_jax.errors import DataError


def _pil_affine_bilinear(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Independent reference: Pillow's affine transform with bilinear sampling.

  Unlike Image.resize, Image.transform never widens its kernel (no antialiasing, no reducing
  pass): output pixel centre (x + 0.5) maps to input coordinate (x + 0.5) * in / out, sampled
  bilinearly around pixel centres, i.e. OpenCV INTER_LINEAR's half-pixel formula. Pillow fills
  points outside the image instead of replicating edges, so compare only where every tap is
  inside (true when shrinking by 2x or more).
  """
  h, w = array.shape
  image = Image.fromarray(array.astype(np.float32), mode="F")
  out = image.transform((out_hw[1], out_hw[0]), Image.Transform.AFFINE,
                        (w / out_hw[1], 0, 0, 0, h / out_hw[0], 0),
                        resample=Image.Resampling.BILINEAR)
  return np.asarray(out)


@pytest.mark.parametrize("in_hw,out_hw", [((900, 900), (64, 64)), ((300, 200), (96, 64)),
                                          ((131, 257), (32, 64))])
def test_resize_float_matches_pil_affine_reference(in_hw, out_hw):
  rng = np.random.default_rng(0)
  array = rng.random(in_hw).astype(np.float32)
  ours = images.resize_bilinear(array, out_hw)
  assert ours.dtype == np.float32 and ours.shape == out_hw
  np.testing.assert_allclose(ours, _pil_affine_bilinear(array, out_hw), atol=2e-5)


def test_resize_binary_mask_shrink_matches_pil_reference():
  mask = np.zeros((900, 900), np.float32)
  mask[100:433, 250:700] = 1.0  # Edges fall between output pixels: fractional values appear.
  ours = images.resize_bilinear(mask, 256)
  ref = _pil_affine_bilinear(mask, (256, 256))
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  assert 0 < ((ours > 0) & (ours < 1)).sum()  # Bilinear, not nearest.


def test_resize_matches_known_opencv_values():
  # cv2.resize(np.uint8([[0, 255]]), (4, 1), interpolation=cv2.INTER_LINEAR) == [0, 64, 191, 255]:
  # sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1), edges replicated.
  row = np.asarray([[0, 255]], np.uint8)
  np.testing.assert_array_equal(images.resize_bilinear(row, (1, 4)), [[0, 64, 191, 255]])
  np.testing.assert_allclose(images.resize_bilinear(row.astype(np.float32), (1, 4)),
                             [[0, 63.75, 191.25, 255]])
  # Halving averages each 2x2 block exactly (taps at x + 0.5 between two centres).
  block = np.arange(16, dtype=np.float32).reshape(4, 4)
  expected = block.reshape(2, 2, 2, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(images.resize_bilinear(block, 2), expected)


def test_resize_uint8_rgb_within_one_level_of_pil():
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (200, 180, 3), dtype=np.uint8)
  ours = images.resize_bilinear(rgb, 64)
  assert ours.dtype == np.uint8 and ours.shape == (64, 64, 3)
  for c in range(3):
    ref = _pil_affine_bilinear(rgb[..., c], (64, 64))
    assert np.abs(ours[..., c].astype(np.float32) - ref).max() <= 0.5 + 1e-3


def _save(path, image: Image.Image):
  image.save(path)
  return path


def test_decode_modes_give_uint8_rgb(tmp_path):
  gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
  out = images.decode_image(_save(tmp_path / "g.png", Image.fromarray(gray, "L")))
  assert out.shape == (6, 8, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))

  rgba = np.random.default_rng(0).integers(0, 256, (6, 8, 4), dtype=np.uint8)
  out = images.decode_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
  np.testing.assert_array_equal(out, rgba[..., :3])

  deep = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300).astype(np.uint16)
  path = _save(tmp_path / "d.png", Image.fromarray(deep))  # 16-bit grayscale PNG.
  assert Image.open(path).mode.startswith("I")
  out = images.decode_image(path)
  np.testing.assert_array_equal(out[..., 0], np.rint(deep / 257.0).astype(np.uint8))
  assert (out[..., 0] == out[..., 2]).all()

  palette = Image.fromarray(rgba[..., :3], "RGB").convert("P")
  out = images.decode_image(_save(tmp_path / "p.png", palette))
  np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))

  jpg = images.decode_image(_save(tmp_path / "j.JPG", Image.fromarray(gray, "L")))
  assert jpg.shape == (6, 8, 3)


def test_load_image_resizes_and_names_bad_files(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  path = _save(tmp_path / "x.png", Image.fromarray(rgb))
  np.testing.assert_array_equal(images.load_image(path), rgb)
  np.testing.assert_array_equal(images.load_image(path, 32), images.resize_bilinear(rgb, 32))

  with pytest.raises(DataError, match="missing.png.*does not exist"):
    images.load_image(tmp_path / "missing.png")
  (tmp_path / "junk.png").write_bytes(b"this is not an image")
  with pytest.raises(DataError, match="junk.png"):
    images.load_image(tmp_path / "junk.png")
  truncated = tmp_path / "cut.png"
  truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  with pytest.raises(DataError, match="cut.png"):
    images.load_image(truncated)
  with pytest.raises(DataError, match="is a folder"):
    images.load_image(tmp_path)


def test_decode_mask_accepts_0_255_and_0_1(tmp_path):
  mask = np.zeros((5, 7), np.uint8)
  mask[1:3, 2:6] = 255
  path = _save(tmp_path / "m255.png", Image.fromarray(mask))
  np.testing.assert_array_equal(images.decode_mask(path), mask // 255)
  path = _save(tmp_path / "m1.png", Image.fromarray(mask // 255))
  np.testing.assert_array_equal(images.decode_mask(path), mask // 255)
  rgb_mask = np.repeat(mask[..., None], 3, -1)
  path = _save(tmp_path / "mrgb.png", Image.fromarray(rgb_mask))
  np.testing.assert_array_equal(images.decode_mask(path), mask // 255)


def test_is_image_file_ignores_strays():
  assert images.is_image_file("a/b/000.PNG") and images.is_image_file("x.tiff")
  for stray in (".DS_Store", "license.txt", "readme.txt", "._000.png", "notes.md", "x.png.bak"):
    assert not images.is_image_file(stray)
