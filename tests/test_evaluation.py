"""Image scores on the device, config validation, and the metrics log."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from draem_jax import config_lib
from draem_jax.evaluation import evaluator
from draem_jax.training import metric_writers
from draem_jax.evaluation import metrics
from draem_jax.errors import ConfigError


def test_device_mean_filter_matches_host_reference():
  rng = np.random.default_rng(0)
  maps = rng.uniform(size=(3, 40, 56)).astype(np.float32)
  maps[1, 5:12, 30:45] = 1.0  # A bright blob: the max sits where the filter covers it.
  for size in (21, 5, 1):
    got = np.asarray(evaluator.mean_filter_max(jnp.asarray(maps), size))
    np.testing.assert_allclose(got, metrics.mean_filter_max(maps, size), rtol=1e-5)
  # Padding counts in the average: ones only in the 11x11 corner block read 11 * 11 / 21^2 =
  # 0.274 (the spec's corner value of an all-ones map); an all-ones map reads 1 inside.
  assert float(evaluator.mean_filter_max(jnp.ones((1, 64, 64)), 21)[0]) == pytest.approx(1.0)
  corner_only = jnp.zeros((1, 64, 64)).at[0, :11, :11].set(1.0)
  assert float(evaluator.mean_filter_max(corner_only, 21)[0]) == pytest.approx(121 / 441)


def test_alternative_image_scores_match_numpy():
  rng = np.random.default_rng(1)
  maps = rng.uniform(size=(3, 40, 56)).astype(np.float32)
  maps[2, 20:30, 10:20] = 1.0
  filtered = metrics.mean_filter(maps, 9)
  want = {"paper": filtered.max(axis=(1, 2)),
          "minus_median": filtered.max(axis=(1, 2)) - np.median(filtered, axis=(1, 2)),
          "p99": np.percentile(maps, 99, axis=(1, 2))}
  assert set(want) == set(evaluator.IMAGE_SCORES)
  for kind, ref in want.items():
    got = np.asarray(evaluator.image_score(jnp.asarray(maps), 9, kind))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=kind)
  # Hand-computed: a map that rises by 0.2 everywhere keeps its minus_median score (away from
  # the zero-padded border the filtered map rises by 0.2 too), while the paper's score rises.
  flat = jnp.zeros((1, 64, 64)).at[0, 28:36, 28:36].set(0.8)
  risen = flat + 0.2
  med = lambda m: float(evaluator.image_score(m, 5, "minus_median")[0])
  assert med(risen) == pytest.approx(med(flat), abs=1e-6)
  assert float(evaluator.image_score(risen, 5, "paper")[0]) == pytest.approx(
      float(evaluator.image_score(flat, 5, "paper")[0]) + 0.2, abs=1e-6)
  # 99th percentile of 0..99 (linear interpolation): 98.01.
  ramp = jnp.arange(100.0).reshape(1, 10, 10)
  assert float(evaluator.image_score(ramp, 5, "p99")[0]) == pytest.approx(98.01, abs=1e-4)
  with pytest.raises(ValueError, match="eval.image_score"):
    evaluator.make_predict_fn(None, 21, "max")


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
    ("eval.image_score", "max"),
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
  with pytest.raises(ConfigError, match=re.escape(field)):  # The field, not only its group.
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


def test_resume_check_names_every_trajectory_change_and_allows_the_rest(tmp_path):
  saved = helpers.tiny_config()
  config_lib.save_config(saved, tmp_path)
  loaded = config_lib.load_config(tmp_path)
  same_trajectory = helpers.tiny_config()
  same_trajectory.train.log_every_steps = 7
  same_trajectory.train.eval_every_steps = 3
  same_trajectory.eval.protocol = "standard"
  same_trajectory.checkpoint.every_steps = 5
  same_trajectory.data.num_workers = 3
  assert config_lib.check_resumable(loaded, same_trajectory, tmp_path) == {}
  changed = helpers.tiny_config()
  changed.train.num_steps = 8
  changed.optim.decay_factor = 0.5
  changed.simulator.beta_max = 0.6
  changed.data.texture_root = str(tmp_path / "other_textures")
  with pytest.raises(ConfigError) as refused:
    config_lib.check_resumable(loaded, changed, tmp_path)
  message = str(refused.value)
  for field in ("train.num_steps: 4 -> 8", "optim.decay_factor: 0.2 -> 0.5",
                "simulator.beta_max: 0.8 -> 0.6", "data.texture_root"):
    assert field in message
  assert str(tmp_path / "config.json") in message
  changes = config_lib.check_resumable(loaded, changed, tmp_path, allow_change=True)
  assert set(changes) == {"train.num_steps", "optim.decay_factor", "simulator.beta_max",
                          "data.texture_root"}
  # A field the saved run did not have counts as a change too.
  newer = helpers.tiny_config()
  newer.simulator.new_option = 1.0
  with pytest.raises(ConfigError, match=r"simulator.new_option: '\(absent\)' -> 1.0"):
    config_lib.check_resumable(loaded, newer, tmp_path)


def test_save_config_keeps_every_replaced_config(tmp_path):
  first = helpers.tiny_config()
  config_lib.save_config(first, tmp_path)
  config_lib.save_config(first, tmp_path, step=2)  # Same config: no history entry.
  assert config_lib.load_history(tmp_path) == []
  second = helpers.tiny_config()
  second.train.num_steps = 10
  config_lib.save_config(second, tmp_path, step=4)
  third = helpers.tiny_config()
  third.train.num_steps = 20
  config_lib.save_config(third, tmp_path, step=10)
  history = config_lib.load_history(tmp_path)
  assert [h["resumed_from_step"] for h in history] == [4, 10]
  assert history[0]["config"] == json.loads(json.dumps(first.to_dict()))
  assert history[1]["changed"] == {"train.num_steps": [10, 20]}
  assert config_lib.load_config(tmp_path).train.num_steps == 20
