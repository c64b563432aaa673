"""Heatmaps, tinted overlays, panels and atomic PNG writing."""

import numpy as np
from PIL import Image
import pytest

from draem_jax.evaluation import visualize


def _image(h=20, w=30, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_heatmap_is_jet():
  values = np.linspace(0, 1, 256)[None]
  heat = visualize.heatmap(values)
  assert heat.shape == (1, 256, 3) and heat.dtype == np.uint8
  # matplotlib's jet ends: dark blue at 0, dark red at 1.
  np.testing.assert_array_equal(heat[0, 0], [0, 0, 128])
  np.testing.assert_array_equal(heat[0, -1], [128, 0, 0])
  # matplotlib's cm.jet(0.5) = (0.4902, 1.0, 0.4775) (bin 128 of 256).
  np.testing.assert_array_equal(visualize.heatmap(np.array([[0.5]]))[0, 0], [125, 255, 122])
  # Hue runs blue -> cyan -> yellow -> red: the dominant channel goes 2, then 1, then 0.
  dominant = np.argmax(heat[0].astype(int) + [0, 1, 2], axis=-1)  # Ties: the later channel.
  assert np.all(np.diff(dominant) <= 0) and set(dominant.tolist()) == {0, 1, 2}
  # Out of range and NaN are clipped rather than wrapping around the table.
  np.testing.assert_array_equal(visualize.heatmap(np.array([[-1.0, 2.0, np.nan]])),
                                [[[0, 0, 128], [128, 0, 0], [0, 0, 128]]])


def test_overlay_tints_only_where_the_map_is_high():
  image = _image()
  amap = np.random.default_rng(1).random((20, 30))
  amap[:5] = 0.0  # A defect-free band.
  amap[5:8] = 0.05  # Below the start of the ramp.
  out = visualize.overlay(image, amap)
  assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
  # Pixel test: zero map, zero tint; the exact image colours.
  np.testing.assert_array_equal(out[:8], image[:8])
  # Independent reference of the blend: opacity alpha * clip((m - start) / (full - start)).
  for start, full, alpha in ((0.1, 0.5, 0.6), (0.3, 0.4, 1.0), (0.0, 1.0, 0.5)):
    got = visualize.overlay(image, amap, alpha, start, full).astype(float)
    a = alpha * np.clip((amap - start) / (full - start), 0, 1)[..., None]
    expected = (1 - a) * image + a * visualize.heatmap(amap)
    assert np.max(np.abs(got - expected)) <= 0.5 + 1e-9
  # Opaque where the map is at or above `full` with alpha 1: the heatmap itself.
  high = amap >= 0.5
  np.testing.assert_array_equal(visualize.overlay(image, amap, 1.0)[high],
                                visualize.heatmap(amap)[high])
  np.testing.assert_array_equal(visualize.overlay(image, amap, alpha=0.0), image)
  # Gray and float [0, 1] images are accepted.
  gray = visualize.overlay(image[..., 0] / 255.0, amap, alpha=0.0)
  np.testing.assert_array_equal(gray, np.repeat(image[..., :1], 3, axis=-1))
  with pytest.raises(ValueError, match="differ"):
    visualize.overlay(image, amap[:-1])
  with pytest.raises(ValueError, match="start < full"):
    visualize.overlay(image, amap, 0.5, 0.6, 0.6)


def test_panel_layout():
  image = _image()
  amap = np.zeros((20, 30))
  amap[5:10, 5:10] = 0.9
  gt = np.zeros((20, 30), bool)
  gt[4:8, 4:8] = True
  out = visualize.panel(image, amap, threshold=0.5, gt_mask=gt, separator=2, legend=False)
  assert out.dtype == np.uint8 and out.shape == (20, 4 * 30 + 3 * 2, 3)
  np.testing.assert_array_equal(out[:, :30], image)
  np.testing.assert_array_equal(out[:, 30:32], 255)  # Separator.
  # The overlay tile: untouched where the map is 0, tinted on the blob.
  tile = out[:, 32:62]
  np.testing.assert_array_equal(tile[amap == 0], image[amap == 0])
  assert np.all(np.any(tile[amap > 0] != image[amap > 0], axis=-1))
  predicted = out[:, 2 * 32:2 * 32 + 30, 0] == 255
  np.testing.assert_array_equal(predicted, amap >= 0.5)
  np.testing.assert_array_equal(out[:, 3 * 32:, 0] == 255, gt)
  no_gt = visualize.panel(image, amap, threshold=0.5, legend=False)
  assert no_gt.shape == (20, 3 * 30 + 2 * 2, 3)
  # Title, captions and the colour scale around the same tiles (tiles big enough for text).
  big = lambda x: np.kron(x, np.ones((10, 10) + (1,) * (x.ndim - 2), x.dtype))
  bare = visualize.panel(big(image), big(amap), 0.5, big(gt), legend=False)
  full = visualize.panel(big(image), big(amap), 0.5, big(gt), title="score 0.93 | label 1")
  assert full.shape[1] == bare.shape[1] and full.shape[0] > bare.shape[0] + 40
  tops = [r for r in range(full.shape[0] - 200 + 1) if np.array_equal(full[r:r + 200], bare)]
  assert len(tops) == 1 and tops[0] > 0  # Text above the tiles...
  top = tops[0]
  assert full[:top].max() > 128  # ...drawn (white on black, anti-aliased).
  below = full[top + 200:].astype(int)
  assert below.shape[0] > 0 and (below.max(-1) - below.min(-1)).max() > 60  # Coloured scale.
  assert visualize.font_size(256) >= 16 and visualize.font_size(900) > visualize.font_size(256)


def test_grid_shape():
  a = np.zeros((10, 12, 3), np.uint8)
  b = np.ones((8, 15, 3), np.uint8)
  out = visualize.grid([a, b, a], columns=2, separator=3)
  assert out.shape == (2 * 10 + 3, 2 * 15 + 3, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:8, 18:], 1)


def test_panel_saved_as_png(tmp_path):
  image = _image()
  amap = np.random.default_rng(2).random((20, 30))
  out = visualize.panel(image, amap, 0.5, amap > 0.7, title="0.5")
  path = visualize.save_png(tmp_path / "eval" / "overlays" / "000.png", out)
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size == (out.shape[1], out.shape[0])
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), out)
  assert sorted(p.name for p in path.parent.iterdir()) == ["000.png"]


def test_save_png_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "a.png"
  visualize.save_png(path, _image())
  before = path.read_bytes()

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    visualize.save_png(path, _image(seed=1))
  assert path.read_bytes() == before  # The old file is intact...
  assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # ...and no temp file remains.
