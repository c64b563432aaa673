"""Loss values of DRAEM_SPEC section 2 against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from draem_jax.training import losses


def _skimage_ssim_map(x, y, data_range):
  """scikit-image's Gaussian SSIM map for each (image, channel), (B, H, W, C)."""
  out = np.zeros_like(x, dtype=np.float64)
  for b in range(x.shape[0]):
    _, s = structural_similarity(
        x[b].astype(np.float64), y[b].astype(np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=data_range, channel_axis=-1, full=True)
    out[b] = s
  return out


def test_ssim_matches_scikit_image_on_interior():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 40, 48, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(scale=0.2, size=x.shape), 0, 1).astype(np.float32)
  ours = np.asarray(losses.ssim_map(jnp.asarray(x), jnp.asarray(y)))
  ref = _skimage_ssim_map(x, y, data_range=1.0)
  # Borders differ by design (zero padding here, reflection in scikit-image); the 11x11
  # window reaches 5 pixels, so everything further in must agree.
  np.testing.assert_allclose(ours[:, 5:-5, 5:-5], ref[:, 5:-5, 5:-5], atol=2e-5)
  # The mean over the full map includes zero-padded borders: different from the interior mean.
  assert abs(float(losses.ssim(jnp.asarray(x), jnp.asarray(y)))
             - ref[:, 5:-5, 5:-5].mean()) > 1e-4


def test_ssim_zero_padding_at_border():
  # Direct 2-D zero-padded convolution as the reference computes it, one pixel at the corner.
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(1, 16, 16, 1)).astype(np.float32)
  y = rng.uniform(size=(1, 16, 16, 1)).astype(np.float32)
  g = losses.gaussian_window()
  w2 = np.outer(g, g)
  pad = lambda a: np.pad(a[0, :, :, 0].astype(np.float64), 5)

  def blur_at(a, i, j):
    return float((pad(a)[i:i + 11, j:j + 11] * w2).sum())

  i = j = 0
  mx, my = blur_at(x, i, j), blur_at(y, i, j)
  vx = blur_at(x * x, i, j) - mx * mx
  vy = blur_at(y * y, i, j) - my * my
  cxy = blur_at(x * y, i, j) - mx * my
  c1, c2 = 0.01**2, 0.03**2
  expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  got = float(losses.ssim_map(jnp.asarray(x), jnp.asarray(y))[0, i, j, 0])
  assert got == pytest.approx(expected, abs=1e-5)


def test_ssim_identical_is_one():
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  assert float(losses.ssim(x, x)) == pytest.approx(1.0, abs=1e-6)


def test_ssim_data_range_branches():
  rng = np.random.default_rng(2)
  # Reconstruction with values below -0.5: L = 2.
  x = rng.uniform(-1, 1, size=(1, 32, 32, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, size=(1, 32, 32, 3)).astype(np.float32)
  assert float(losses.ssim_data_range(jnp.asarray(x))) == 2.0
  ours = np.asarray(losses.ssim_map(jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(ours[:, 5:-5, 5:-5],
                             _skimage_ssim_map(x, y, 2.0)[:, 5:-5, 5:-5], atol=2e-5)
  # The range comes from the reconstruction (first argument) only.
  assert float(losses.ssim_data_range(jnp.asarray(np.abs(x)))) == 1.0
  assert float(losses.ssim_data_range(jnp.asarray(x * 200))) == 256.0  # max > 128, min < -0.5
  assert float(losses.ssim_data_range(jnp.asarray(np.abs(x) * 200))) == 255.0


def _focal_closed_form(p_anomalous, target, gamma=2.0, smooth=1e-5):
  p_true = np.where(target == 1, p_anomalous, 1 - p_anomalous)
  pt = p_true * (1 - 2 * smooth) + 2 * smooth
  return float(np.mean(-((1 - pt)**gamma) * np.log(pt)))


def test_focal_closed_form_hand_cases():
  # Logits (0, z) give p_anomalous = sigmoid(z).
  z = np.array([[[[-2.0], [0.0]], [[1.5], [4.0]]]], np.float32)  # (1, 2, 2, 1)
  logits = np.concatenate([np.zeros_like(z), z], -1)
  target = np.array([[[0, 1], [1, 0]]], np.float32)
  p = 1 / (1 + np.exp(-z[..., 0]))
  got = float(losses.focal(jnp.asarray(logits), jnp.asarray(target)))
  assert got == pytest.approx(_focal_closed_form(p, target), rel=1e-5)
  # A worked number: p_true = 0.5 everywhere -> pt = 0.5 + 1e-5 (1 - ...), loss ~ 0.25 ln 2.
  half = jnp.zeros((1, 3, 3, 2))
  assert float(losses.focal(half, jnp.zeros((1, 3, 3)))) == pytest.approx(
      0.25 * np.log(2), rel=1e-4)


def test_focal_all_normal_target_is_penalised():
  # The known bug elsewhere weights the normal class 0; imperfect normal predictions must cost.
  logits = jnp.stack([jnp.zeros((2, 8, 8)), jnp.full((2, 8, 8), -1.0)], -1)
  loss = float(losses.focal(logits, jnp.zeros((2, 8, 8, 1))))
  assert loss > 0.01
  p = 1 / (1 + np.exp(1.0))
  assert loss == pytest.approx(_focal_closed_form(np.full((2, 8, 8), p), np.zeros((2, 8, 8))),
                               rel=1e-5)


def test_focal_perfect_prediction_is_near_zero():
  logits = jnp.stack([jnp.full((1, 4, 4), 50.0), jnp.full((1, 4, 4), -50.0)], -1)
  assert float(losses.focal(logits, jnp.zeros((1, 4, 4)))) < 1e-9


def test_total_is_sum_of_terms_and_l2_matches_numpy():
  rng = np.random.default_rng(3)
  rec = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  tgt = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  logits = rng.normal(size=(2, 16, 16, 2)).astype(np.float32)
  mask = (rng.uniform(size=(2, 16, 16, 1)) > 0.7).astype(np.float32)
  out = losses.draem_loss(jnp.asarray(rec), jnp.asarray(tgt), jnp.asarray(logits),
                          jnp.asarray(mask))
  # float64 reference: float32 sums in a different order agree to ~1e-6 relative.
  l2_ref = np.mean((rec.astype(np.float64) - tgt.astype(np.float64))**2)
  assert float(out.l2) == pytest.approx(l2_ref, rel=1e-5)
  assert float(out.ssim) == pytest.approx(1 - float(losses.ssim(rec, tgt)), rel=1e-5)
  assert float(out.total) == pytest.approx(float(out.l2 + out.ssim + out.focal), rel=1e-6)
