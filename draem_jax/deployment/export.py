"""Exporting a trained run for deployment: ONNX, a serialized `jax.export` module, metadata.

The exported function is the run's inference exactly as `evaluator.make_predict_fn` computes
it, with the checkpoint's variables baked in as constants:

  image (N, H, W, 3) float32 in [0, 1], RGB, at the run's data.image_size (H, W), resized and
  placed by the run's `image_io.Preprocess` (recorded in the JSON file)
    -> anomaly_map (N, H, W) float32, softmax probability of the anomalous class (for
       model.variant='recon_ae', 1 - SSIM(image, reconstruction); `models.anomaly_map`; with
       eval.tile_size: the blended tiles, unrolled in the graph),
       score (N,) float32, the eval.image_score of the map (by default the max of the
       mean-filtered map, eval.mean_filter_size or eval.mean_filter_fraction).

The ONNX file is produced by jax2onnx from the traced JAX function (no hand-written graph);
the StableHLO artifact by `jax.export`. Beside them a JSON file says what a deployer needs.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from draem_jax.evaluation import evaluator
from draem_jax import fileio
from draem_jax import image_io
from draem_jax import inference
from draem_jax.evaluation import validation
from draem_jax.data import pipeline
from draem_jax.errors import ConfigError, DataError

ONNX_OPSET = 23
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
DYNAMIC_BATCH = "dynamic"
# Training images whose activation ranges calibrate the 8-bit model, by default.
CALIBRATION_IMAGES = 64


def deploy_thresholds(decided: dict[str, Any]) -> dict[str, Any]:
  """The metadata fields of the decision thresholds `inference.run_thresholds` chose
  (the same rule as predict.py's).

  Returns:
    {'image_threshold': float or None (the deployer must choose one), 'pixel_threshold',
    'threshold_source'} and, with a validation split, its min-max statistics under
    'normalization'.
  """
  out = {k: decided[k] for k in ("image_threshold", "pixel_threshold", "threshold_source")}
  validated = decided.get("validated")
  if validated is not None:
    out["normalization"] = {k: validated[k] for k in validation.NORMALIZATION_KEYS
                            if k in validated}
  return out


def make_inference_fn(run: inference.LoadedRun):
  """`f(image) -> (anomaly_map, score)` with the run's variables as host constants.

  Always in float32: the parameters are float32 whatever model.dtype, and ONNX Runtime's CPU
  kernels (and its quantizer) have no bfloat16 convolution, so a run trained with
  model.dtype='bfloat16' exports the same network computing in float32.
  """
  variables = jax.device_get(run.variables)
  model = run.model.clone(dtype=jnp.float32)
  # Tiles as a static loop: the ONNX converter takes static slices.
  predict = evaluator.predict_fn_for(model, run.config.eval, unroll_tiles=True)

  def infer(image):
    return predict(variables, image.astype(jnp.float32))

  return infer


def onnx_model(infer, batch_dim: int | str, size: int | tuple[int, int]):
  """The ONNX ModelProto of `infer` (image (batch_dim, H, W, 3) float32 -> map, score), at
  `size` = (H, W) or a square side.

  jax2onnx traces it with the model's max-pool and upsampling lowered to single MaxPool and
  Resize nodes (`onnx_ops`), so ONNX Runtime keeps the whole graph in one layout.
  """
  # Export-only dependencies, imported here so that training never needs them.
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
  from draem_jax.deployment import onnx_ops  # pylint: disable=g-import-not-at-top,unused-import
  height, width = image_io.size_hw(size)
  return to_onnx(infer, inputs=[(batch_dim, height, width, 3)], opset=ONNX_OPSET,
                 model_name="draem", input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))


def _batch_dim(batch: int | str) -> int | str:
  if batch == DYNAMIC_BATCH:
    return "N"
  try:
    value = int(batch)
  except (TypeError, ValueError):
    value = 0
  if value <= 0:
    raise ConfigError(f"--batch={batch!r} must be a positive integer or 'dynamic'.")
  return value


_MAP_MEANING = {
    "draem": "float32 (N, H, W), probability of the anomalous class",
    "disc_only": "float32 (N, H, W), probability of the anomalous class",
    "recon_ae": "float32 (N, H, W), 1 - SSIM(image, reconstruction), mean over channels",
}  # What the anomaly map is, per model.variant.


def num_recon_convs(variables) -> int:
  """Convolutions of the reconstructive network: its 'kernel' parameters."""
  return sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(
      variables["params"]["reconstructive"]) if path[-1].key == "kernel")


def _calibration_images(config, count: int) -> np.ndarray:
  """float32 (K, H, W, 3) in [0, 1]: `count` of the run's training images."""
  try:
    images = pipeline.sample_train_images(config, count)
  except (ConfigError, DataError) as e:
    raise type(e)(f"--int8 calibrates on the run's training images, which cannot be read: "
                  f"{e}") from e
  return images.astype(np.float32) / 255.0


def _export_int8(run: inference.LoadedRun, float_path: Path, metadata: dict[str, Any],
                 validated: dict[str, Any] | None, images: np.ndarray,
                 reduce_range: bool) -> dict[str, Path]:
  """model.int8.onnx and model.int8.json beside the float `float_path` (`quantize`)."""
  import onnx  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from draem_jax.deployment import quantize  # pylint: disable=g-import-not-at-top  # Export-only.
  int8_path = float_path.with_suffix(".int8.onnx")
  recon_convs = num_recon_convs(run.variables)
  quantize.quantize(float_path, int8_path, images, recon_convs, INPUT_NAME,
                    reduce_range=reduce_range)
  sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
              for p in (float_path, int8_path)]
  float_thresholds = {k: metadata.get(k) for k in ("image_threshold", "pixel_threshold",
                                                    "threshold_source", "normalization")
                      if k in metadata}
  thresholds, report = quantize.thresholds_and_report(run.config, *sessions, float_thresholds,
                                                      validated)
  int8_meta = {k: v for k, v in metadata.items() if k not in float_thresholds}
  int8_meta.update(thresholds)
  int8_meta["quantization"] = {
      "format": "ONNX QDQ, onnxruntime static quantization",
      "weights": "int8, per output channel, " + ("7-bit range (reduce_range)" if reduce_range
                                                  else "full range"),
      "activations": "uint8, per tensor, MinMax calibration",
      "calibration_images": int(len(images)),
      "float_convolutions": quantize.float_conv_names(onnx.load(str(int8_path)), recon_convs),
      "float_model": float_path.name, **report}
  print(quantize.summary(report))
  return {"int8_onnx": int8_path,
          "int8_metadata": fileio.atomic_write_json(int8_path.with_suffix(".json"), int8_meta)}


def export_run(workdir: str | os.PathLike, out: str | os.PathLike | None = None,
               step: int | None = None, batch: int | str = DYNAMIC_BATCH,
               int8: bool = False, calibration_images: int = CALIBRATION_IMAGES,
               int8_reduce_range: bool = False) -> dict[str, Path]:
  """Writes `<out>` (ONNX), `<out stem>.jax_export` (StableHLO) and `<out stem>.json`.

  Args:
    workdir: a folder written by train.py.
    out: the ONNX file (default: <workdir>/export/<step>/model.onnx).
    step: checkpoint step (default: newest).
    batch: a fixed batch size N, or 'dynamic' for a symbolic batch dimension.
    int8: also `<out stem>.int8.onnx` and `.int8.json`, the 8-bit model (`quantize`), with
      its own thresholds and its test-split comparison with the float model.
    calibration_images: training images that calibrate the 8-bit activation ranges.
    int8_reduce_range: 7-bit weights, for CPUs without VNNI (`quantize.quantize`).

  Returns:
    {'onnx', 'jax_export', 'metadata'} (and 'int8_onnx', 'int8_metadata'): the paths written.
  """
  workdir = Path(workdir).expanduser()
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist.")
  batch_dim = _batch_dim(batch)
  if int8 and calibration_images < 1:
    raise ConfigError(f"--calibration_images={calibration_images}: the 8-bit model needs at "
                      "least 1 training image (default 64).")
  run = inference.load_run(workdir, step)
  model_config = run.config.model
  if int8 and (model_config.get("variant", "draem") != "draem"
               or model_config.get("sspcab", False)):
    raise ConfigError(f"--int8 quantizes DRAEM's two networks as trained with the default "
                      f"model; {workdir} is a model.variant={model_config.get('variant')!r} / "
                      f"model.sspcab={model_config.get('sspcab', False)} run: export it without "
                      "--int8 (the float ONNX model).")
  # Read before anything is written: the 8-bit model needs the training images.
  calibration = _calibration_images(run.config, calibration_images) if int8 else None
  # predict.py's rule (chosen on the validation split now if the checkpoint has none yet).
  decided = inference.run_thresholds(run, workdir)
  # (H, W): the whole resized image (the model is fully convolutional).
  size = pipeline.preprocess(run.config).size
  out = Path(out) if out else workdir / "export" / str(run.step) / "model.onnx"
  created = [d for d in (out.parent, *out.parent.parents) if not d.exists()]
  out.parent.mkdir(parents=True, exist_ok=True)
  # Everything is written to a staging folder beside `out` and moved into place only once all
  # of it was written: a failure (in quantization, say) leaves no partial export behind.
  staging = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
  try:
    staged = _write_export(run, workdir, staging / out.name, batch_dim, size, decided,
                           calibration, int8_reduce_range)
    paths = {}
    for kind, path in staged.items():
      paths[kind] = out.parent / path.name
      os.replace(path, paths[kind])
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # Folders made for an export that failed: empty, removed.
      if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
  return paths


def _write_export(run: inference.LoadedRun, workdir: Path, out: Path, batch_dim: int | str,
                  size: tuple[int, int], decided: dict[str, Any],
                  calibration: np.ndarray | None, int8_reduce_range: bool) -> dict[str, Path]:
  """Writes the files of `export_run` beside `out` (in its staging folder); `size` is the
  (H, W) of the run's resized images."""
  pre = pipeline.preprocess(run.config)
  infer = make_inference_fn(run)
  proto = onnx_model(infer, batch_dim, size)
  paths = {"onnx": fileio.atomic_write_bytes(out, proto.SerializeToString())}

  if batch_dim == "N":
    (n,) = jax.export.symbolic_shape("N")
  else:
    n = batch_dim
  exported = jax.export.export(jax.jit(infer))(
      jax.ShapeDtypeStruct((n, *size, 3), jnp.float32))
  paths["jax_export"] = fileio.atomic_write_bytes(out.with_suffix(".jax_export"),
                                                  bytes(exported.serialize()))

  filter_size = evaluator.filter_size_for(size, run.config.eval.mean_filter_size,
                                          float(run.config.eval.get("mean_filter_fraction", 0)))
  tile = run.config.eval.get("tile_size", 0)
  kind = evaluator.score_kind(run.config.eval)
  metadata = {
      "format": "draem-jax onnx export",
      "category": str(run.config.data.category),
      "checkpoint_step": run.step,
      "workdir": str(workdir.absolute()),
      "input": {"name": INPUT_NAME, "shape": [batch_dim if batch_dim != "N" else None,
                                              *size, 3],
                "dtype": "float32", "layout": "NHWC", "channel_order": "RGB",
                "value_range": [0.0, 1.0],
                "resize": ("antialiased bilinear (Pillow BILINEAR)" if pre.antialias else
                           "bilinear, half-pixel centres, no antialiasing (OpenCV "
                           "INTER_LINEAR)") + f", {pre.mode}"},
      "outputs": {"anomaly_map": _MAP_MEANING[run.config.model.get("variant", "draem")],
                  "score": f"float32 (N,), image score '{kind}'"
                           + (f" (mean filter {filter_size}x{filter_size})" if kind != "p99"
                              else " (99th percentile of the map)")},
      "image_size": size[0] if size[0] == size[1] else list(size),  # A side when square.
      "preprocess": pre.to_metadata(),
      "tiles": ({"size": list(image_io.size_hw(tile, "eval.tile_size")),
                 "overlap": float(run.config.eval.get("tile_overlap", 0.25))} if tile else None),
      "mean_filter_size": filter_size,
      "image_score": kind,
      "model_variant": str(run.config.model.get("variant", "draem")),
      # The network computes in float32 whatever the run's model.dtype (`make_inference_fn`).
      "compute_dtype": "float32",
      "trained_dtype": str(run.config.model.get("dtype", "float32")),
      "onnx_opset": ONNX_OPSET,
      **deploy_thresholds(decided),
  }
  paths["metadata"] = fileio.atomic_write_json(out.with_suffix(".json"), metadata)
  if calibration is not None:
    paths.update(_export_int8(run, out, metadata, decided["validated"], calibration,
                              int8_reduce_range))
  return paths


def load_jax_export(path: str | os.PathLike):
  """The `jax.export.Exported` module in a `.jax_export` file; call it with `.call(images)`."""
  return jax.export.deserialize(bytearray(Path(path).read_bytes()))
