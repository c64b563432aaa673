"""An 8-bit ONNX model of an export (ONNX Runtime static quantization) and its own thresholds.

`export.py --int8` writes, beside the float model.onnx, model.int8.onnx and model.int8.json:

* Quantized: every 3x3 convolution inside the two networks, in ONNX Runtime's QDQ format
  (it runs them as QLinearConv): weights int8 per output channel with the full 8-bit range,
  activations uint8 per tensor with MinMax ranges observed on training images (calibration).
* Kept in float: the convolutions into and out of image space (the first and last of each
  network: 3 or 6 input channels, 3 or 2 outputs) and the score's mean filter (if the image
  score has one: not 'p99'), each told by what it is (`float_conv_names`). They are under
  1% of the arithmetic. On a trained bottle run (64x64, 1,800 steps; bench/RESULTS.md) with
  the mean filter quantized too every test image came out anomalous (image AUROC 52.5 vs
  97.8); the four image-space convolutions quantized cost 0.9 points, 7-bit weights
  (`reduce_range`) 1.7.
* Thresholds: int8 scores differ from the float model's (by up to 0.05 on that run), so the
  float thresholds would misclassify images near them. The 8-bit model's thresholds are chosen
  again, the same way and on the same split as the float model's: the validation split's
  method if the run holds one out, else the F1-max on the test split.
* Report (in model.int8.json and printed): image and pixel AUROC of both models on the test
  split, the largest score difference and how many decisions differ.
"""

import tempfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import onnx
from onnxruntime import quantization as ort_quantization
from onnxruntime.quantization import shape_inference

from draem_jax import fileio
from draem_jax.evaluation import metrics as metrics_lib
from draem_jax.evaluation import validation
from draem_jax.data import pipeline


def _is_mean_filter(weight: np.ndarray | None) -> bool:
  """A 1 -> 1 channel kernel of equal values: the image score's k x k mean filter (jax2onnx
  writes it as a 3-D Conv, kernel (1, 1, 1, k, k), of ones)."""
  return (weight is not None and weight.ndim >= 3 and weight.shape[:2] == (1, 1)
          and bool(np.all(weight == weight.flat[0])))


def float_conv_names(model, num_recon_convs: int) -> list[str]:
  """Names of the Conv nodes of an exported onnx.ModelProto that stay float.

  Each Conv is told by what it is, for every eval.image_score: a 1 -> 1 channel kernel of
  equal values is the score's mean filter (absent for 'p99', shared by max and median for
  'minus_median'); the others are the two networks' layers in data-flow order, the
  reconstructive network's (each feeds the next: no skips) before the discriminative
  network's. Kept float: the first and last layer of each network and any mean filter.

  Args:
    model: the ONNX model of `export.onnx_model` (or its 8-bit model, whose quantized
      convolutions take their weights through DequantizeLinear).
    num_recon_convs: convolutions of the reconstructive network (its 'kernel' parameters).

  Raises:
    ValueError: the picked layers do not have the channels those layers have (3 in, 3 out,
      6 in, 2 out), i.e. the graph is not an export of this model.
  """
  weights = {t.name: t for t in model.graph.initializer}
  convs = [n for n in model.graph.node if n.op_type == "Conv"]

  def dims(node):
    tensor = weights.get(node.input[1])
    return None if tensor is None else tuple(tensor.dims)

  def is_filter(node):  # Only 1 -> 1 kernels are read in full.
    d = dims(node)
    return (d is not None and d[:2] == (1, 1)
            and _is_mean_filter(onnx.numpy_helper.to_array(weights[node.input[1]])))

  is_filters = [is_filter(n) for n in convs]
  filters = [n for n, f in zip(convs, is_filters) if f]
  layers = [n for n, f in zip(convs, is_filters) if not f]
  picks = [0, num_recon_convs - 1, num_recon_convs, len(layers) - 1]
  channels = [(dims(layers[i]) or (None, None))[:2] if 0 <= i < len(layers) else (None, None)
              for i in picks]
  # (out, in) channels of those layers; None: any (the widths).
  expected = [(None, 3), (3, None), (None, 6), (2, None)]
  if len(set(picks)) < len(picks) or not all(
      want in (None, got) for pair, wanted in zip(channels, expected)
      for got, want in zip(pair, wanted)):
    raise ValueError(f"the ONNX graph's convolutions {picks} (of {len(layers)}, mean filters "
                     f"aside) have (out, in) channels {channels}, not those of DRAEM's "
                     f"image-space layers {expected}; quantize a model written by export.py.")
  return [layers[i].name for i in picks] + [n.name for n in filters]


def fixed_batch(model) -> int | None:
  """The batch size of an ONNX model exported with --batch N, or None (dynamic)."""
  dim = model.graph.input[0].type.tensor_type.shape.dim[0]
  return dim.dim_value if dim.HasField("dim_value") else None


def _batches(images: np.ndarray, batch_size: int):
  """(batch, n): consecutive batches of `batch_size` images (the last one padded by repeating
  its first image) and how many of each are real."""
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, axis=0)])
    yield batch, n


class _Calibration(ort_quantization.CalibrationDataReader):
  """The calibration images, (K, S, S, 3) float32, one at a time or in the model's fixed
  batch (padding repeats an image: the observed ranges do not change)."""

  def __init__(self, images: np.ndarray, input_name: str, batch_size: int):
    self._feeds = iter([{input_name: batch} for batch, _ in _batches(images, batch_size)])

  def get_next(self):
    return next(self._feeds, None)


def quantize(float_path: str | Path, out_path: str | Path, images: np.ndarray,
             num_recon_convs: int, input_name: str = "image", reduce_range: bool = False
             ) -> Path:
  """Writes the 8-bit model of `float_path` to `out_path` (atomically); returns out_path.

  Args:
    float_path: the float ONNX file written by export.py.
    out_path: where the quantized ONNX file goes.
    images: float32 (K, S, S, 3) in [0, 1], the calibration images.
    num_recon_convs: convolutions of the reconstructive network (`float_conv_names`).
    input_name: the model's input.
    reduce_range: 7-bit weights. ONNX Runtime's uint8 x int8 kernels on x86 CPUs without
      VNNI (AVX2 only) add pairs of products in int16, which full-range weights can saturate;
      7-bit weights cannot, at some accuracy (module docstring). With VNNI (or on ARM) keep
      False.
  """
  q = ort_quantization
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
    prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
    # Shapes on every tensor and the graph's constants folded, as the quantizer expects.
    shape_inference.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    calibration = _Calibration(np.asarray(images, np.float32), input_name,
                               fixed_batch(model) or 1)
    q.quantize_static(
        str(prepared), str(quantized), calibration,
        quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["Conv"],
        per_channel=True, reduce_range=reduce_range, activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
        nodes_to_exclude=float_conv_names(model, num_recon_convs))
    return fileio.atomic_write_bytes(out_path, quantized.read_bytes())


def run_session(session, images: np.ndarray, batch_size: int = 8
                ) -> tuple[np.ndarray, np.ndarray]:
  """(maps (N, S, S), scores (N,)) of an onnxruntime session on float32 or uint8 images, in
  batches of `batch_size` or of the model's fixed batch size."""
  (model_input,) = session.get_inputs()
  if isinstance(model_input.shape[0], int):
    batch_size = model_input.shape[0]
  maps, scores = [], []
  for x, n in _batches(images, batch_size):
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    m, s = session.run(None, {model_input.name: x})
    maps.append(m[:n])
    scores.append(s[:n])
  return np.concatenate(maps), np.concatenate(scores)


def _test_split(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """{'images' uint8 (N, S, S, 3), 'labels' (N,), 'gt' bool (N, S, S) or None}, or None
  without a test split."""
  if not pipeline.has_test_split(config):
    return None
  ds = pipeline.make_eval_dataset(config)
  images, masks = [], []
  for batch in ds:
    images.append(batch["image"][batch["valid"]])
    masks.append(batch["mask"][batch["valid"]])
  gt = (metrics_lib.gt_masks(np.concatenate(masks), config.eval.protocol) if ds.has_masks
        else None)
  return {"images": np.concatenate(images), "labels": ds.labels, "gt": gt}


def _quality(labels, scores, gt, maps) -> dict[str, float]:
  out = {"image_auroc": metrics_lib.image_auroc(labels, scores)}
  if gt is not None:
    out["pixel_auroc"] = metrics_lib.pixel_auroc(gt, maps)
  return out


def thresholds_and_report(config: ml_collections.ConfigDict, float_session, int8_session,
                          float_thresholds: dict[str, Any], validated: dict[str, Any] | None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The 8-bit model's thresholds (as `export.deploy_thresholds` returns them) and the report.

  Args:
    config: the run's config.
    float_session, int8_session: onnxruntime sessions of the float and 8-bit models.
    float_thresholds: the float model's `deploy_thresholds`.
    validated: the run's thresholds.json (validation split), or None.
  """
  test = _test_split(config)
  if test is not None:  # Both models' test outputs, computed once for thresholds and report.
    float_maps, float_scores = run_session(float_session, test["images"])
    int8_maps, int8_scores = run_session(int8_session, test["images"])
  if validated is not None and pipeline.has_validation_split(config):
    split = validation.synthetic_split(config)
    maps, scores = run_session(int8_session, split["images"])
    chosen = validation.choose_thresholds(
        split["labels"], scores, split["masks"], maps, method=validated["method"],
        target_fpr=validated["target_fpr"], sensitivity=validated["sensitivity"])
    thresholds = {"image_threshold": chosen["image_threshold"],
                  "pixel_threshold": chosen["pixel_threshold"],
                  "threshold_source": f"validation split of train/good ({chosen['method']}), "
                                      "scored by the 8-bit model",
                  "normalization": {k: chosen[k] for k in validation.NORMALIZATION_KEYS}}
  elif test is not None and float_thresholds["image_threshold"] is not None:
    thresholds = {"image_threshold": metrics_lib.f1_max(test["labels"], int8_scores)[1],
                  "pixel_threshold": (metrics_lib.f1_max(test["gt"], int8_maps)[1]
                                      if test["gt"] is not None else 0.5),
                  "threshold_source": "f1_max on the test split, scored by the 8-bit model"}
  else:  # The float model has no threshold either: the deployer chooses one.
    thresholds = dict(float_thresholds)

  report: dict[str, Any] = {"test_split": None}
  if test is not None:
    report["test_split"] = {
        "num_images": int(len(test["labels"])),
        "float": _quality(test["labels"], float_scores, test["gt"], float_maps),
        "int8": _quality(test["labels"], int8_scores, test["gt"], int8_maps),
        "max_score_difference": float(np.max(np.abs(int8_scores - float_scores))),
        "max_map_difference": float(np.max(np.abs(int8_maps - float_maps))),
    }
    if (float_thresholds["image_threshold"] is not None
        and thresholds["image_threshold"] is not None):
      float_says = float_scores >= float_thresholds["image_threshold"]
      int8_says = int8_scores >= thresholds["image_threshold"]
      report["test_split"]["decisions_changed"] = int(np.sum(float_says != int8_says))
  return thresholds, report


def summary(report: dict[str, Any]) -> str:
  """One line of the report for the console."""
  test = report.get("test_split")
  if not test:
    return "8-bit model: no test split to compare it on."
  parts = [f"image AUROC {100 * test['int8']['image_auroc']:.1f} "
           f"(float {100 * test['float']['image_auroc']:.1f})"]
  if "pixel_auroc" in test["int8"]:
    parts.append(f"pixel AUROC {100 * test['int8']['pixel_auroc']:.1f} "
                 f"(float {100 * test['float']['pixel_auroc']:.1f})")
  parts.append(f"max score difference {test['max_score_difference']:.3f}")
  if "decisions_changed" in test:
    parts.append(f"{test['decisions_changed']} of {test['num_images']} decisions differ")
  return "8-bit model on the test split: " + ", ".join(parts)
