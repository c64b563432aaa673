"""model.variant (DRAEM, the discriminative or the reconstructive network alone) and SSPCAB:
structure, parameter counts, losses, anomaly maps, and train + evaluate + predict + export."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnxruntime as ort
import pytest

import helpers
from configs import mvtec
from draem_jax import config_lib
from draem_jax import inference
from draem_jax import models
from draem_jax.deployment import export
from draem_jax.errors import ConfigError
from draem_jax.evaluation import evaluator
from draem_jax.training import losses
from draem_jax.training import parallel
from draem_jax.training import train_step as ts
from draem_jax.training import trainer


def _model(variant="draem", sspcab=False, recon=128, disc=64):
  config = mvtec.get_config().model
  config.variant, config.sspcab = variant, sspcab
  config.recon_width, config.disc_width = recon, disc
  return models.create_model(config)


def _param_counts(model, size=256):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
  return {name: models.count_params(p) for name, p in shapes["params"].items()}


def _sspcab_params(c, k=1, r=8):
  """anomalib's SSPCAB(c): four Conv2d(c, c, k) with bias, Linear(c, c // r), Linear(c // r, c)."""
  return 4 * (c * c * k * k + c) + (c * (c // r) + c // r) + ((c // r) * c + c)


def test_parameter_counts_at_paper_widths():
  assert _param_counts(_model()) == {"reconstructive": 69_048_579, "discriminative": 28_374_146}
  # The discriminative network alone reads 3 channels instead of 6: 64 x 9 x 3 fewer weights.
  assert _param_counts(_model("disc_only")) == {"discriminative": 28_374_146 - 64 * 9 * 3}
  assert _param_counts(_model("recon_ae")) == {"reconstructive": 69_048_579}
  # SSPCAB(1024) in place of two 3x3 conv (1024 -> 1024, bias) + BatchNorm layers.
  block5 = 2 * (9 * 1024 * 1024 + 1024) + 2 * 2 * 1024
  assert _sspcab_params(1024) == 4_461_696
  with_sspcab = 69_048_579 - block5 + _sspcab_params(1024)
  assert with_sspcab == 54_629_763
  assert _param_counts(_model(sspcab=True))["reconstructive"] == with_sspcab
  assert _param_counts(_model("recon_ae", sspcab=True)) == {"reconstructive": with_sspcab}


def test_sspcab_block_structure():
  c, size = 16, 9
  block = models.SSPCAB(c)
  x = jax.random.uniform(jax.random.key(0), (1, size, size, c))
  variables = block.init(jax.random.key(1), x)
  assert models.count_params(variables["params"]) == _sspcab_params(c)
  assert sorted(variables["params"]) == ["fc1", "fc2", "masked_conv1", "masked_conv2",
                                         "masked_conv3", "masked_conv4"]
  assert variables["params"]["fc1"]["kernel"].shape == (c, c // 8)
  # With the attention's weights zeroed it scales by the constant sigmoid(bias): what is left
  # is the masked convolution, whose output at a pixel reads only the four corners at
  # distance 2 (kernel 1, dilation 1), never the pixel itself nor its 3x3 neighbourhood.
  params = jax.tree.map(lambda p: p, variables["params"])
  params["fc1"] = {"kernel": jnp.zeros_like(params["fc1"]["kernel"]),
                   "bias": params["fc1"]["bias"]}
  params["fc2"] = {"kernel": jnp.zeros_like(params["fc2"]["kernel"]),
                   "bias": params["fc2"]["bias"]}
  jac = jax.jacobian(lambda x: block.apply({"params": params}, x)[0, 4, 4, 0])(x)[0]
  reads = np.argwhere(np.abs(np.asarray(jac)).sum(-1) > 0)
  assert sorted(map(tuple, reads)) == [(2, 2), (2, 6), (6, 2), (6, 6)]
  # The block sows its own loss, MSE(input, output), when "losses" is mutable.
  y, sown = block.apply(variables, x, mutable=["losses"])
  np.testing.assert_allclose(sown["losses"]["sspcab"][0], np.mean((np.asarray(y) - x) ** 2),
                             rtol=1e-5)
  assert y.shape == x.shape


def test_recon_ae_anomaly_map():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32)
  np.testing.assert_allclose(models.anomaly_map(x, x, None), 0.0, atol=1e-5)
  rec = x.at[:, 8:16, 8:16].set(0.5)
  maps = np.asarray(models.anomaly_map(x, rec, None))
  want = 1.0 - np.mean(np.asarray(losses.ssim_map(x, rec, data_range=1.0)), axis=-1)
  np.testing.assert_allclose(maps, np.clip(want, 0, 1), atol=1e-6)
  assert maps[:, 10:14, 10:14].min() > 0.5 > maps[:, 28:, 28:].max()
  # One image's map does not depend on the rest of its batch.
  np.testing.assert_allclose(models.anomaly_map(x[:1], rec[:1], None), maps[:1], atol=1e-6)
  logits = jnp.asarray(rng.normal(size=(2, 32, 32, 2)), jnp.float32)
  np.testing.assert_allclose(models.anomaly_map(x, rec, logits),
                             jax.nn.softmax(logits, axis=-1)[..., 1], atol=1e-7)


def test_train_step_losses_per_variant():
  batch = {"target": np.full((2, 32, 32, 3), 0.5, np.float32),
           "augmented": np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32),
           "mask": np.zeros((2, 32, 32, 1), np.float32)}
  batch["mask"][1, 4:12, 4:12] = 1
  mesh = parallel.make_mesh(jax.devices()[:1])
  seen = {}
  for variant, sspcab in (("disc_only", False), ("recon_ae", True)):
    config = helpers.tiny_config()
    config.model.variant, config.model.sspcab = variant, sspcab
    model = models.create_model(config.model)
    tx = ts.make_optimizer(config.optim, 10)
    state = ts.create_train_state(jax.random.key(0), model, tx, (32, 32), mesh)
    step = ts.jit_train_step(ts.make_train_step(model, tx, config), mesh)
    _, metrics = step(state, parallel.global_batch(batch, mesh))
    seen[variant] = {k: float(v) for k, v in metrics.items()}
  disc, recon = seen["disc_only"], seen["recon_ae"]
  assert disc["l2"] == disc["ssim"] == 0 and disc["loss"] == disc["focal"] > 0
  assert "sspcab" not in disc
  assert recon["focal"] == 0 and recon["l2"] > 0 and recon["ssim"] > 0 and recon["sspcab"] > 0
  assert recon["loss"] == pytest.approx(recon["l2"] + recon["ssim"] + 0.1 * recon["sspcab"],
                                        rel=1e-6)


def test_variant_config_errors():
  for field, value in (("variant", "unet"), ("sspcab_lambda", -1.0)):
    config = mvtec.get_config()
    config.model[field] = value
    with pytest.raises(ConfigError, match=f"model.{field}"):
      config_lib.validate_config(config)
  config = mvtec.get_config()
  config.model.variant, config.model.sspcab = "disc_only", True
  with pytest.raises(ConfigError, match="model.sspcab"):
    config_lib.validate_config(config)
  with pytest.raises(ConfigError, match="disc_only"):
    models.create_model(config.model)


@pytest.fixture(scope="module", params=[("disc_only", False), ("recon_ae", True),
                                        ("draem", True)], ids=lambda p: f"{p[0]}-sspcab{p[1]}")
def trained(request, tmp_path_factory):
  """A 3-step run of each variant on bottle (folder source, 32 x 32, widths 4)."""
  variant, sspcab = request.param
  workdir = tmp_path_factory.mktemp(f"{variant}_{sspcab}")
  config = helpers.tiny_config(root=helpers.SHARED_DATA / "mvtec_ad" / "bottle",
                               source="folder")
  config.data.texture_root = str(helpers.SHARED_DATA / "dtd" / "images" / "banded")
  config.model.variant, config.model.sspcab = variant, sspcab
  config.train.num_steps = 3
  config.checkpoint.every_steps = 3
  config.eval.write_overlays = False
  trainer.train_and_evaluate(config, workdir)
  return variant, sspcab, workdir


def test_train_evaluate_predict_export(trained, tmp_path):
  variant, sspcab, workdir = trained
  metrics = json.loads((workdir / "eval" / "3" / "metrics.json").read_text())
  assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1
  assert (workdir / "eval" / "3" / "report.html").is_file()
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("sspcab" in l for l in lines) == sspcab
  # predict.py's path: any image, a record per image.
  bottle = helpers.SHARED_DATA / "mvtec_ad" / "bottle" / "test" / "broken_large"
  records = inference.predict_images(workdir, str(bottle / "000.png"), tmp_path / "pred",
                                     threshold=0.5, write_overlays=False)
  assert len(records) == 1 and np.isfinite(records[0]["score"])
  # Export: ONNX and jax.export give the predict function's maps and scores.
  paths = export.export_run(workdir, tmp_path / "m.onnx")
  meta = json.loads(paths["metadata"].read_text())
  assert meta["model_variant"] == variant
  run = inference.load_run(workdir)
  predict = jax.jit(evaluator.predict_fn_for(run.model, run.config.eval))
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  want_maps, want_scores = (np.asarray(a) for a in predict(jax.device_get(run.variables), x))
  session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
  maps, scores = session.run(None, {"image": x})
  np.testing.assert_allclose(maps, want_maps, atol=1e-4)
  np.testing.assert_allclose(scores, want_scores, atol=1e-4)
  jmaps, _ = export.load_jax_export(paths["jax_export"]).call(x)
  np.testing.assert_allclose(np.asarray(jmaps), want_maps, atol=1e-4)
  if variant == "recon_ae":
    assert 0 <= want_maps.min() and want_maps.max() <= 1
  with pytest.raises(ConfigError, match="--int8"):
    export.export_run(workdir, tmp_path / "q.onnx", int8=True)


def test_old_config_without_the_new_fields_resumes_as_the_default():
  current = mvtec.get_config()
  old = current.to_dict()
  for group, names in (("simulator", ("mask_shape", "texture_source", "augment_textures",
                                      "random_opacity")),
                       ("data", ("max_textures",)),
                       ("model", ("variant", "sspcab", "sspcab_lambda"))):
    for name in names:
      del old[group][name]
  old = ml_collections.ConfigDict(old)
  assert config_lib.check_resumable(old, current, "w") == {}
  assert isinstance(models.create_model(old.model), models.DRAEM)
  assert not models.create_model(old.model).sspcab
  changed = mvtec.get_config()
  changed.model.variant = "recon_ae"
  with pytest.raises(ConfigError, match="model.variant"):
    config_lib.check_resumable(old, changed, "w")
