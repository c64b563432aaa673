"""Image scores on the device, config validation, and the metrics log."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from draem_jax import config_lib, evaluation, metric_writers, metrics
from draem_jax.errors import ConfigError


def test_device_mean_filter_matches_host_reference():
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(3, 40, 56)).astype(np.float32)
  maps[1, 5:12, 30:45] = 1.0  # A bright blob: the max sits where the filter covers it.
  for size in (21, 5, 1):
    got = np.asarray(evaluation.mean_filter_max(jnp.asarray(maps), size))
    np.testing.assert_allclose(got, metrics.mean_filter_max(maps, size), rtol=1e-5)
  # Padding counts in the average: ones only in the 11x11 corner block read 11 * 11 / 21^2 =
  # 0.274 (the spec's corner value of an all-ones map); an all-ones map reads 1 inside.
  assert float(evaluation.mean_filter_max(jnp.ones((1, 64, 64)), 21)[0]) == pytest.approx(1.0)
  corner_only = jnp.zeros((1, 64, 64)).at[0, :11, :11].set(1.0)
  assert float(evaluation.mean_filter_max(corner_only, 21)[0]) == pytest.approx(121 / 441)


@pytest.mark.parametrize("field,value", [
    ("model.dtype", "float16"),
    ("model.recon_width", 0),
    ("optim.learning_rate", -1.0),
    ("optim.decay_fractions", (0.9, 0.8)),
    ("train.batch_size", 0),
    ("train.num_steps", -7),
    ("train.log_every_steps", 0),
    ("eval.protocol", "strict"),
    ("eval.mean_filter_size", 20),
    ("eval.aupro_fpr_limit", 0.0),
    ("eval.threshold_method", "median"),
    ("eval.target_fpr", 1.0),
    ("eval.sensitivity", 0.0),
    ("checkpoint.every_steps", 0),
    ("simulator.anomaly_prob", 1.5),
])
def test_config_errors_name_the_field(field, value):
  config = helpers.tiny_config()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(ConfigError, match=field.split(".")[0]):
    config_lib.validate_config(config)


def test_paper_config_is_valid_and_round_trips(tmp_path):
  config = helpers.mvtec.get_config("screw")
  config_lib.validate_config(config)
  config_lib.save_config(config, tmp_path)
  loaded = config_lib.load_config(tmp_path)
  assert loaded.data.category == "screw" and list(loaded.optim.decay_fractions) == [0.8, 0.9]
  config_lib.validate_config(loaded)
  other = helpers.mvtec.get_config("screw")
  other.model.recon_width = 64
  with pytest.raises(ConfigError, match="model.recon_width"):
    config_lib.check_resumable(loaded, other, tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="config.json"):
    config_lib.load_config(tmp_path)


def test_metric_log_drops_steps_after_the_resumed_checkpoint(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path)
  for step in (1, 2, 3, 4):
    writer.write_scalars(step, {"loss": 1.0 / step})
  writer.write_scalars(5, {"loss": float("nan")})
  writer.close()
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] is None
  resumed = metric_writers.MetricWriter(tmp_path, resume_step=2)
  resumed.write_scalars(3, {"loss": 0.25})
  resumed.close()
  steps = [r["step"] for r in metric_writers.read_metrics(tmp_path)]
  assert steps == [1, 2, 3]
