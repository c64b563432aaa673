"""What one accelerator does with DRAEM, measured in one command within a time budget.

  python bench/gpu_suite.py --budget_s 540 --out DIR          # a GPU host (docs/gpu.md)
  python bench/gpu_suite.py --budget_s 60 --out DIR --tiny    # the same code paths on a CPU

Phases, each with its own time cap (a share of --budget_s); a phase that cannot finish in
what is left is skipped and says why, and results.json is rewritten after every phase, so a
run stopped at any moment keeps what it measured:

1. train_step: the full train step (anomaly simulator on the device, both networks forward
   and backward in training mode, Adam) at 256x256, widths 128/64, batch 8 and the largest
   batch that fits, float32 and bfloat16: median step time after compilation, images/s,
   compile time, MFU and peak memory; and `model.layer_impl` custom against plain. MFU counts
   the networks' FLOPs only: forward 395.9 GFLOP per 256x256 image at the paper's widths
   (XLA's own count of the forward pass is recorded beside it), training 3x that. It is given
   against the device's published dense peak (bfloat16: H100/H200 989 TFLOP/s; float32
   against TF32's 495 when XLA's default precision runs float32 matrix work as TF32, which
   the suite detects by timing an 8192^3 float32 matmul at default and at highest precision,
   else against plain float32) and against a measured 8192^3 matmul of the same dtype.
2. simulator: the anomaly simulator alone (vmap batching) at batch 8 and 64, and its share
   of the bfloat16 batch-8 step.
3. bottle: `configs/mvtec.py` on MVTec AD bottle (read as a folder) in bfloat16 for as many
   epochs as the remaining budget allows (the learning-rate schedule follows that length;
   the epochs are recorded), then evaluated: image AUROC, pixel AUROC, pixel AP, AU-PRO.
4. projection: the wall time of the paper's 700 epochs at the measured rate.
5. report: results.json (every number, the device, jax/jaxlib versions, the commit),
   suite.log, up to three overlays and report.html in --out (at most 6 files).

--tiny runs every phase at 64x64, widths 8/4, a few steps (the CPU dry run of the tests).
Numbers are only meaningful on an otherwise idle accelerator.
"""

import time

_PROCESS_START = time.monotonic()  # The budget counts from here, imports included.

# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import argparse
import ast
import html
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# JAX's GPU allocator takes 75% of the memory by default; the largest batch may use more.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import jax
import jax.numpy as jnp
import numpy as np

from configs import mvtec as mvtec_config
from draem_jax import fileio
from draem_jax import models
from draem_jax.simulation import simulator
from draem_jax.training import parallel
from draem_jax.training import train_step as ts
# pylint: enable=g-import-not-at-top,wrong-import-position

# Forward GFLOP of one 256x256 image at widths 128/64 (both networks, multiply-add = 2).
PAPER_FORWARD_GFLOP = 395.9
TRAIN_FLOP_FACTOR = 3.0  # Forward + backward (input and weight gradients).
# Dense peaks in TFLOP/s by device-name fragment: (bfloat16, TF32, plain float32).
PEAKS_TFLOPS = {
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.4, 494.7, 66.9),  # SXM (device_kind "NVIDIA H100 80GB HBM3").
    "H200": (989.4, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
}
PAPER_EPOCHS = 700
RESULTS_FILE = "results.json"
LOG_FILE = "suite.log"
REPORT_FILE = "report.html"
MAX_OVERLAYS = 3
# Shares of the budget each phase may use at most (phase 3 takes what is left).
PHASE_SHARES = {"train_step": 0.40, "simulator": 0.06}
RESERVE_S = 4.0  # Kept for the projection and the report.


def _default_data(sub: str) -> str:
  """The bundle's data beside this script's repository, else ../shared/data."""
  bundled = REPO / "data" / sub
  return str(bundled if bundled.is_dir() else REPO.parent / "shared" / "data" / sub)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget_s", type=float, default=540.0,
                      help="Wall-clock budget of the whole suite in seconds.")
  parser.add_argument("--out", required=True, help="Folder for the (at most 6) result files.")
  parser.add_argument("--tiny", action="store_true",
                      help="64x64, widths 8/4, a few steps: a dry run on a CPU.")
  parser.add_argument("--data_root", default=_default_data("mvtec_ad/bottle"),
                      help="MVTec AD bottle laid out as a folder data set.")
  parser.add_argument("--texture_root", default=_default_data("dtd/images"))
  parser.add_argument("--phases", default="1,2,3,4,5", help="Which phases to run.")
  parser.add_argument("--max_batch", type=int, default=None,
                      help="Upper bound of the largest batch tried (default 256; tiny 8).")
  parser.add_argument("--max_epochs", type=int, default=None,
                      help="At most this many epochs in phase 3 (default 700; tiny 2).")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="Override a field of phase 3's config, e.g. --set "
                      "data.crop_size=256 (Python literal, else string). Repeatable.")
  return parser.parse_args(argv)


class Sizes:
  """The shapes and repetition counts of a full or a --tiny run."""

  def __init__(self, tiny: bool, max_batch: int | None, max_epochs: int | None):
    self.tiny = tiny
    self.image = 64 if tiny else 256
    self.recon_width, self.disc_width = (8, 4) if tiny else (128, 64)
    self.batch = 8
    # The largest batch tried; tiny: 8, so that the CPU dry run compiles no extra programs.
    self.max_batch = max_batch or (8 if tiny else 256)
    self.windows, self.steps_per_window = (3, 1) if tiny else (5, 10)
    self.sim_batches = (8, 64)
    self.sim_repeats = 3 if tiny else 10
    self.matmul_n = 256 if tiny else 8192
    self.matmul_repeats = 3 if tiny else 10
    self.max_epochs = max_epochs or (2 if tiny else PAPER_EPOCHS)


def _finite_or_none(value):
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def peaks_for(device_kind: str):
  """(bfloat16, TF32, float32) dense peaks in FLOP/s for a device name, or None."""
  for fragment, peaks in PEAKS_TFLOPS.items():
    if fragment.lower() in device_kind.lower():
      return tuple(p * 1e12 for p in peaks)
  return None


def _commit() -> str:
  bundle = REPO / "BUNDLE.json"
  if bundle.is_file():
    return json.loads(bundle.read_text()).get("commit", "")
  result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False)
  return result.stdout.strip()


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


class Suite:
  """Runs the phases in order and keeps every number in `self.results`."""

  def __init__(self, args, start: float | None = None):
    """`start`: the monotonic time the budget counts from (default: now)."""
    self.args = args
    self.start = time.monotonic() if start is None else start
    self.deadline = self.start + args.budget_s
    self.sizes = Sizes(args.tiny, args.max_batch, args.max_epochs)
    self.phases = {int(p) for p in args.phases.split(",") if p.strip()}
    if 3 in self.phases:
      # Bad overrides or data fail here, before any compute or file.
      from draem_jax import config_lib  # pylint: disable=g-import-not-at-top
      from draem_jax import data as data_lib  # pylint: disable=g-import-not-at-top
      config = self.bottle_config(1)
      config_lib.validate_config(config)
      data_lib.validate_data_config(config)
    self.out = Path(args.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.log_file = open(self.out / LOG_FILE, "a", encoding="utf-8")
    device = jax.devices()[0]
    self.device = device
    self.platform = device.platform
    self.peaks = peaks_for(device.device_kind)
    self.layer_impl = models.resolve_layer_impl("auto", self.platform)
    self.other_impl = "custom" if self.layer_impl == "plain" else "plain"
    self.mesh = parallel.make_mesh([device])
    self.results = {
        "suite": {"budget_s": args.budget_s, "tiny": args.tiny, "phases": sorted(self.phases),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "environment": {
            "device": device.device_kind, "platform": self.platform,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "jaxlib": _jaxlib_version(), "python": platform.python_version(),
            "commit": _commit(), "host": platform.node(),
            "layer_impl_auto": self.layer_impl,
            "image_size": self.sizes.image,
            "widths": [self.sizes.recon_width, self.sizes.disc_width],
            "peak_tflops": (dict(zip(("bfloat16", "tf32", "float32"),
                                     [p / 1e12 for p in self.peaks]))
                            if self.peaks else None),
        },
        "phase_status": {},
        "matmul": {}, "flops": {}, "train_step": {}, "layer_impl": {}, "simulator": {},
        "bottle": {}, "projection": {},
        "not_applicable": {},
    }
    if self.peaks is None:
      self.results["not_applicable"]["mfu_vs_peak"] = (
          f"no published peak for {device.device_kind!r}; MFU is given against the measured "
          "matmul only")
    self.compile_s = {}
    self.step_s = {}
    self._initial_state = None

  # --- bookkeeping ------------------------------------------------------------------------

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def remaining(self) -> float:
    return self.deadline - time.monotonic()

  def log(self, message: str) -> None:
    line = f"[{self.elapsed():7.1f} s] {message}"
    print(line, flush=True)
    self.log_file.write(line + "\n")
    self.log_file.flush()

  def save(self) -> None:
    self.results["suite"]["elapsed_s"] = round(self.elapsed(), 2)
    fileio.atomic_write_json(self.out / RESULTS_FILE, self.results, indent=1, sort_keys=True)

  def status(self, phase: str, status: str, reason: str = "", started: float | None = None):
    entry = {"status": status}
    if reason:
      entry["reason"] = reason
    if started is not None:
      entry["seconds"] = round(time.monotonic() - started, 2)
    self.results["phase_status"][phase] = entry
    self.log(f"phase {phase}: {status}{': ' + reason if reason else ''}")
    self.save()

  # --- helpers ----------------------------------------------------------------------------

  def config(self, dtype: str, batch: int, impl: str):
    config = mvtec_config.get_config()
    config.data.image_size = self.sizes.image
    config.model.recon_width = self.sizes.recon_width
    config.model.disc_width = self.sizes.disc_width
    config.model.dtype = dtype
    config.model.layer_impl = impl
    config.train.batch_size = batch
    config.simulator.batching = "vmap"
    return config

  def raw_batch(self, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (batch, self.sizes.image, self.sizes.image, 3)
    return parallel.global_batch({"image": rng.integers(0, 256, shape, dtype=np.uint8),
                                  "texture": rng.integers(0, 256, shape, dtype=np.uint8)},
                                 self.mesh)

  def peak_memory(self) -> float | None:
    stats = self.device.memory_stats() or {}
    value = stats.get("peak_bytes_in_use")
    return float(value) if value is not None else None

  def memory_limit(self) -> float | None:
    stats = self.device.memory_stats() or {}
    value = stats.get("bytes_limit")
    return float(value) if value is not None else None

  def compile_step(self, dtype: str, batch: int, impl: str):
    """(compiled step, state, batch, compile seconds, XLA memory analysis in bytes)."""
    config = self.config(dtype, batch, impl)
    model = models.create_model(config.model)
    tx = ts.make_optimizer(config.optim, 1000)
    if self._initial_state is None:
      # Parameters and optimiser state do not depend on dtype, layers or batch: initialised
      # (and its initialiser compiled) once, copied for each measurement (the step donates).
      self._initial_state = ts.create_train_state(
          jax.random.key(0), model, tx, (self.sizes.image, self.sizes.image), self.mesh)
    state = jax.jit(lambda t: jax.tree_util.tree_map(jnp.copy, t),
                    out_shardings=parallel.replicated(self.mesh))(self._initial_state)
    data = self.raw_batch(batch)
    step = ts.jit_train_step(ts.make_train_step(model, tx, config, simulate=simulator.simulate),
                             self.mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    memory = None
    try:
      analysis = compiled.memory_analysis()
      memory = float(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                     + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
    except Exception:  # pylint: disable=broad-except  # Not every backend reports it.
      memory = None
    return compiled, state, data, compile_s, memory

  def time_steps(self, compiled, state, data):
    """Median seconds per step over windows of steps, after one warm-up step.

    A window holds up to `steps_per_window` steps, fewer when one step alone takes more than
    a tenth of a second (large batches), so that every measurement costs a few seconds.
    """
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    if not np.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"non-finite loss {float(metrics['loss'])}")
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    steps = max(1, min(self.sizes.steps_per_window, int(1.0 / (time.perf_counter() - t0))))
    per_step = []
    for _ in range(self.sizes.windows):
      t0 = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled(state, data)
      jax.block_until_ready((state, metrics))
      per_step.append((time.perf_counter() - t0) / steps)
    return statistics.median(per_step), per_step, float(metrics["loss"])

  def train_flops_per_image(self) -> float:
    return self.results["flops"]["train_per_image"]

  def mfu(self, dtype: str, images_per_s: float) -> dict:
    achieved = images_per_s * self.train_flops_per_image()
    out = {"achieved_tflops": achieved / 1e12}
    matmul = self.results["matmul"].get("bfloat16_tflops" if dtype == "bfloat16"
                                        else "float32_default_tflops")
    out["mfu_vs_matmul"] = achieved / (matmul * 1e12) if matmul else None
    if self.peaks:
      uses_tf32 = self.results["matmul"].get("float32_uses_tf32", False)
      peak = self.peaks[0] if dtype == "bfloat16" else self.peaks[1 if uses_tf32 else 2]
      out["peak_used"] = ("bfloat16" if dtype == "bfloat16"
                          else "tf32" if uses_tf32 else "float32")
      out["mfu_vs_peak"] = achieved / peak
    return out

  # --- phase 1 ----------------------------------------------------------------------------

  def measure_flops(self) -> None:
    """XLA's FLOP count of one image's training-mode forward pass; the paper-size constant."""
    s = self.sizes
    model = models.DRAEM(s.recon_width, s.disc_width)
    shape = (1, s.image, s.image, 3)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
                      ).lower(variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    try:
      xla_forward = _finite_or_none((lowered.cost_analysis() or {}).get("flops"))
    except Exception:  # pylint: disable=broad-except  # Not every backend counts FLOPs.
      xla_forward = None
    if xla_forward is None:
      self.results["not_applicable"]["xla_forward_per_image"] = "XLA gave no FLOP count"
    paper_size = not s.tiny
    forward = PAPER_FORWARD_GFLOP * 1e9 if paper_size else xla_forward
    if forward is None:
      raise RuntimeError("no FLOP count for this size: XLA's cost analysis gave none")
    self.results["flops"] = {
        "forward_per_image": forward,
        "forward_per_image_source": ("DRAEM at 256x256, widths 128/64 (395.9 GFLOP)"
                                     if paper_size else "XLA cost analysis"),
        "xla_forward_per_image": xla_forward,
        "train_factor": TRAIN_FLOP_FACTOR,
        "train_per_image": TRAIN_FLOP_FACTOR * forward,
    }

  def measure_matmul(self) -> None:
    """Measured n^3 matmuls: bfloat16, float32 at default and at highest precision."""
    n, repeats = self.sizes.matmul_n, self.sizes.matmul_repeats
    key_a, key_b = jax.random.split(jax.random.key(0))
    out = {"n": n}
    for name, dtype, precision in (("bfloat16", jnp.bfloat16, None),
                                   ("float32_default", jnp.float32, None),
                                   ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST)):
      a = jax.random.normal(key_a, (n, n), dtype)
      b = jax.random.normal(key_b, (n, n), dtype)
      fn = jax.jit(lambda a, b, p=precision: jnp.matmul(a, b, precision=p))
      jax.block_until_ready(fn(a, b))
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        times.append(time.perf_counter() - t0)
      out[f"{name}_tflops"] = 2 * n**3 / statistics.median(times) / 1e12
    # TF32 (or bfloat16 passes) run float32 matrix work several times faster than true
    # float32; within 1.5x the default precision is full float32.
    out["float32_default_over_highest"] = (out["float32_default_tflops"]
                                           / out["float32_highest_tflops"])
    out["float32_uses_tf32"] = bool(self.platform == "gpu"
                                    and out["float32_default_over_highest"] > 1.5)
    self.results["matmul"] = out
    self.log(f"matmul {n}^3: bf16 {out['bfloat16_tflops']:.1f}, f32 default "
             f"{out['float32_default_tflops']:.1f}, f32 highest "
             f"{out['float32_highest_tflops']:.1f} TFLOP/s (TF32: {out['float32_uses_tf32']})")

  def measure_step(self, dtype: str, batch: int, impl: str) -> dict:
    compiled, state, data, compile_s, memory = self.compile_step(dtype, batch, impl)
    step_s, windows, loss = self.time_steps(compiled, state, data)
    del compiled, state, data
    images_per_s = batch / step_s
    row = {"dtype": dtype, "batch": batch, "layer_impl": impl, "step_s": step_s,
           "step_s_windows": windows, "images_per_s": images_per_s, "compile_s": compile_s,
           "loss": loss, "xla_memory_bytes": memory,
           "peak_memory_bytes": self.peak_memory(),
           "memory_source": "device peak_bytes_in_use (cumulative)"
                            if self.peak_memory() is not None else "XLA memory analysis"}
    if row["peak_memory_bytes"] is None:
      row["peak_memory_bytes"] = memory
    row.update(self.mfu(dtype, images_per_s))
    self.compile_s[(dtype, batch, impl)] = compile_s
    self.step_s[(dtype, batch, impl)] = step_s
    mfu = row.get("mfu_vs_peak")
    self.log(f"train step {dtype} batch {batch} {impl}: {step_s * 1e3:.1f} ms, "
             f"{images_per_s:.1f} img/s, compile {compile_s:.1f} s"
             + (f", MFU {mfu:.1%}" if mfu is not None else "")
             + (f", {row['peak_memory_bytes'] / 2**30:.2f} GiB"
                if row["peak_memory_bytes"] else ""))
    return row

  def largest_batch(self, dtype: str) -> tuple[int, str]:
    """The largest batch (a multiple of 8, <= max_batch) the device memory should hold,
    estimated from XLA's memory analysis of the batch-8 step."""
    row = self.results["train_step"].get(f"{dtype}_batch{self.sizes.batch}")
    limit = self.memory_limit()
    if limit is None or not row or not row.get("xla_memory_bytes"):
      return self.sizes.max_batch, "max_batch (the device reports no memory limit)"
    state_bytes = 4 * 4 * self._param_count()  # params, gradients, Adam's two moments.
    per_image = max(row["xla_memory_bytes"] - state_bytes, 1.0) / self.sizes.batch
    fits = int((0.9 * limit - state_bytes) // per_image) // 8 * 8
    batch = max(self.sizes.batch, min(self.sizes.max_batch, fits))
    return batch, (f"XLA memory analysis of batch {self.sizes.batch}: {per_image / 2**20:.0f} "
                   f"MiB per image, 90% of {limit / 2**30:.1f} GiB, at most max_batch "
                   f"{self.sizes.max_batch}")

  def _param_count(self) -> int:
    s = self.sizes
    model = models.DRAEM(s.recon_width, s.disc_width)
    shape = (1, s.image, s.image, 3)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
    return models.count_params(variables["params"])

  def phase_train_step(self) -> None:
    started = time.monotonic()
    cap = started + PHASE_SHARES["train_step"] * self.args.budget_s
    self.measure_flops()
    self.measure_matmul()
    b = self.sizes.batch
    auto, other = self.layer_impl, self.other_impl
    plan = [("bfloat16", b, auto), ("float32", b, auto), ("bfloat16", b, other),
            ("bfloat16", "largest", auto), ("float32", "largest", auto)]
    skipped, failed = [], []
    for dtype, batch, impl in plan:
      rule = None
      if batch == "largest":
        batch, rule = self.largest_batch(dtype)
        if batch == b and f"{dtype}_batch{b}" in self.results["train_step"]:
          # Nothing larger fits (or max_batch is 8): the batch-8 measurement is the largest.
          row = dict(self.results["train_step"][f"{dtype}_batch{b}"], largest_batch_rule=rule)
          self.results["train_step"][f"{dtype}_largest"] = row
          continue
      # Cost of the next measurement: the slowest compilation so far and its steps.
      last = max(self.compile_s.values(), default=0.0) + max(self.step_s.values(), default=0.0) * (
          batch / b) * (2 + self.sizes.windows * self.sizes.steps_per_window)
      if self.step_s and time.monotonic() + last > min(cap, self.deadline - RESERVE_S):
        skipped.append(f"{dtype}/{'largest' if rule else batch}/{impl}")
        continue
      row = None
      for _ in range(2):
        try:
          row = self.measure_step(dtype, batch, impl)
          break
        except Exception as e:  # pylint: disable=broad-except  # One failure loses one row.
          if _is_out_of_memory(e) and batch > b:
            smaller = max(b, batch * 3 // 4 // 8 * 8)
            self.log(f"batch {batch} ran out of memory; trying {smaller}")
            batch = smaller
            continue
          self.log(traceback.format_exc())
          failed.append(f"{dtype}/{batch}/{impl}: {type(e).__name__}: {e}"[:300])
          break
      if row is None:
        continue
      if rule:
        row["largest_batch_rule"] = rule
      if impl == auto:
        self.results["train_step"][f"{dtype}_largest" if rule else f"{dtype}_batch{b}"] = row
      else:
        self.results["layer_impl"][f"{impl}_{dtype}_batch{b}"] = row
      self.save()
    ref = self.results["train_step"].get(f"bfloat16_batch{b}")
    alt = self.results["layer_impl"].get(f"{other}_bfloat16_batch{b}")
    if ref and alt:
      self.results["layer_impl"].update({
          "auto_resolves_to": auto,
          f"{auto}_bfloat16_batch{b}": {k: ref[k] for k in ("step_s", "images_per_s",
                                                           "compile_s")},
          "plain_over_custom_step_time": (ref["step_s"] / alt["step_s"] if auto == "plain"
                                          else alt["step_s"] / ref["step_s"]),
      })
    reasons = ([f"skipped by the phase cap: {', '.join(skipped)}"] if skipped else []) + (
        [f"failed: {'; '.join(failed)}"] if failed else [])
    self.status("train_step", "partial" if reasons else "done", "; ".join(reasons), started)

  # --- phase 2 ----------------------------------------------------------------------------

  def phase_simulator(self) -> None:
    started = time.monotonic()
    cap = started + PHASE_SHARES["simulator"] * self.args.budget_s
    cfg = simulator.SimulatorConfig.from_config(self.config("bfloat16", 8, "auto").simulator)
    fn = jax.jit(lambda key, images, textures: simulator.simulate(key, images, textures, cfg))
    out = {"batching": cfg.batching}
    for batch in self.sizes.sim_batches:
      if time.monotonic() > min(cap, self.deadline - RESERVE_S):
        self.status("simulator", "partial", f"batch {batch} skipped by the phase cap", started)
        self.results["simulator"] = out
        return
      data = self.raw_batch(batch, seed=1)
      keys = [jax.random.key(i) for i in range(self.sizes.sim_repeats + 1)]
      t0 = time.perf_counter()
      jax.block_until_ready(fn(keys[0], data["image"], data["texture"]))
      compile_s = time.perf_counter() - t0
      times = []
      for key in keys[1:]:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(key, data["image"], data["texture"]))
        times.append(time.perf_counter() - t0)
      median = statistics.median(times)
      out[f"batch{batch}"] = {"seconds": median, "ms_per_image": median / batch * 1e3,
                              "first_call_s": compile_s}
      self.log(f"simulator batch {batch}: {median * 1e3:.2f} ms ({median / batch * 1e3:.3f} "
               "ms per image)")
    step = self.step_s.get(("bfloat16", self.sizes.batch, self.layer_impl))
    if step:
      out["share_of_bfloat16_batch8_step"] = out["batch8"]["seconds"] / step
    self.results["simulator"] = out
    self.status("simulator", "done", "", started)

  # --- phase 3 ----------------------------------------------------------------------------

  def bottle_config(self, epochs: int, num_train: int = 1):
    config = mvtec_config.get_config()
    config.data.source = "folder"
    config.data.root = self.args.data_root
    config.data.category = "bottle"
    config.data.texture_root = self.args.texture_root
    config.data.image_size = self.sizes.image
    config.model.dtype = "bfloat16"
    config.model.recon_width = self.sizes.recon_width
    config.model.disc_width = self.sizes.disc_width
    config.train.num_epochs = epochs
    config.train.num_steps = -1
    config.checkpoint.every_steps = 10**9  # Only the final one.
    # One logging window per epoch: the first holds the compilation, the others the rate.
    config.train.log_every_steps = max(1, -(-num_train // config.train.batch_size))
    for item in self.args.set:
      field, _, value = item.partition("=")
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # A plain string.
      node = config
      *groups, name = field.split(".")
      for group in groups:
        node = node.get(group) if hasattr(node, "get") else None
      if node is None or not hasattr(node, "get") or name not in node:
        raise SystemExit(f"--set {item}: configs/mvtec.py has no field {field!r}.")
      node[name] = value
    return config

  def phase_bottle(self) -> None:
    started = time.monotonic()
    from draem_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from draem_jax.training import trainer  # pylint: disable=g-import-not-at-top
    config = self.bottle_config(1)
    data_lib.validate_data_config(config)
    num_train = data_lib.num_train_examples(config)
    per_epoch = ts.steps_per_epoch(config.train.batch_size, num_train)
    key = ("bfloat16", config.train.batch_size, self.layer_impl)
    step_s, compile_s = self.step_s.get(key), self.compile_s.get(key)
    out = {"num_train_images": num_train, "steps_per_epoch": per_epoch,
           "config": "configs/mvtec.py (folder source, bfloat16)", "overrides": self.args.set}
    self.results["bottle"] = out
    if step_s is None:
      self.status("bottle", "skipped", "no bfloat16 batch-8 step time from phase 1 to size "
                  "the run by", started)
      return
    # Fixed costs: the train step's compilation, evaluation (compilation of the predict
    # function, the test split, metrics, overlays), data loading and the final checkpoint.
    overhead = 2.0 * compile_s + (10.0 if self.sizes.tiny else 45.0)
    available = self.remaining() - RESERVE_S - overhead
    epochs = min(self.sizes.max_epochs, int(available // (per_epoch * step_s)))
    out.update({"estimated_overhead_s": overhead, "available_for_steps_s": available})
    if epochs < 1:
      self.status("bottle", "skipped",
                  f"budget too short: {self.remaining():.0f} s left, one epoch needs about "
                  f"{overhead + per_epoch * step_s + RESERVE_S:.0f} s (compilation, "
                  f"{per_epoch} steps, evaluation)", started)
      return
    config = self.bottle_config(epochs, num_train)
    out.update({"epochs": epochs, "steps": epochs * per_epoch})
    self.log(f"bottle: {epochs} epochs ({epochs * per_epoch} steps) in bfloat16")
    workdir = Path(tempfile.mkdtemp(prefix="gpu_suite_bottle_"))
    stop_at = self.deadline - RESERVE_S
    fired, finished = threading.Event(), threading.Event()

    def stop():
      # The trainer turns SIGTERM into a checkpoint and a clean stop between steps, but only
      # once its loop runs: repeat the signal until the run returns (before and after the
      # loop it reaches the no-op handler below).
      if finished.wait(max(stop_at - time.monotonic(), 0.0)):
        return
      fired.set()
      while not finished.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        finished.wait(2.0)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # Never die of our own signal.
    watchdog = threading.Thread(target=stop, daemon=True)
    watchdog.start()
    t0 = time.monotonic()
    try:
      result = trainer.train_and_evaluate(config, workdir)
      out["status"] = "done"
    except trainer.Preempted as e:
      result = None
      out["status"] = f"stopped by the budget at step {e.step}"
    finally:
      finished.set()
      watchdog.join()
      signal.signal(signal.SIGTERM, previous)
    out["wall_s"] = time.monotonic() - t0
    self._read_training_log(workdir, out, t0)
    if result:
      for name in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"):
        out[name] = _finite_or_none(result.get(name))
      out["step"] = int(result.get("step", epochs * per_epoch))
      self._copy_overlays(workdir / "eval" / str(out["step"]) / "overlays")
    shutil.rmtree(workdir, ignore_errors=True)
    self.save()
    if result:
      self.status("bottle", "done", "", started)
    else:
      self.status("bottle", "stopped", out["status"] + (" (timer)" if fired.is_set() else ""),
                  started)

  def _read_training_log(self, workdir: Path, out: dict, t0_monotonic: float) -> None:
    """Steady training throughput and the split of the wall time, from metrics.jsonl."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if line.strip()] if (workdir / "metrics.jsonl").is_file() else []
    train = [r for r in records if "images_per_second" in r]
    if not train:
      return
    # The first logging window holds the compilation: the steady rate is that of the others.
    steady = train[1:] or train
    out["train_images_per_s"] = float(np.median([r["images_per_second"] for r in steady]))
    out["train_steps_per_s"] = float(np.median([r["steps_per_second"] for r in steady]))
    out["final_loss"] = train[-1].get("loss")
    wall_start = time.time() - (time.monotonic() - t0_monotonic)
    out["train_wall_s"] = train[-1]["time"] - wall_start
    out["eval_wall_s"] = max(out["wall_s"] - out["train_wall_s"], 0.0)

  def _copy_overlays(self, folder: Path) -> None:
    if not folder.is_dir():
      return
    picked = []
    for defect in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "good"):
      images = sorted(defect.glob("*.png"))
      if images and len(picked) < MAX_OVERLAYS:
        picked.append(images[0])
    for path in picked:
      shutil.copy2(path, self.out / f"overlay_{path.parent.name}_{path.name}")
    self.results["bottle"]["overlays"] = [f"overlay_{p.parent.name}_{p.name}" for p in picked]

  # --- phase 4 ----------------------------------------------------------------------------

  def phase_projection(self) -> None:
    started = time.monotonic()
    bottle = self.results["bottle"]
    num_train = bottle.get("num_train_images", 209)
    b = self.sizes.batch
    out = {"epochs": PAPER_EPOCHS, "num_train_images": num_train}
    step_s = self.step_s.get(("bfloat16", b, self.layer_impl))
    source = f"phase 1 bfloat16 batch {b} step"
    if bottle.get("train_steps_per_s"):
      step_s, source = 1.0 / bottle["train_steps_per_s"], "phase 3 steady training rate"
    if step_s is None:
      self.status("projection", "skipped", "no measured step time", started)
      return
    steps = PAPER_EPOCHS * ts.steps_per_epoch(b, num_train)
    fixed = bottle.get("eval_wall_s", 0.0) + self.compile_s.get(("bfloat16", b,
                                                                  self.layer_impl), 0.0)
    out.update({"batch": b, "steps": steps, "step_s": step_s, "rate_source": source,
                "train_s": steps * step_s, "fixed_s": fixed,
                "total_s": steps * step_s + fixed,
                "goal_s": 600.0, "goal_met": steps * step_s + fixed <= 600.0})
    largest = self.results["train_step"].get("bfloat16_largest")
    if largest:
      big_steps = PAPER_EPOCHS * ts.steps_per_epoch(largest["batch"], num_train)
      out["largest_batch"] = {"batch": largest["batch"], "steps": big_steps,
                              "train_s": big_steps * largest["step_s"]}
    self.results["projection"] = out
    self.log(f"700 epochs at batch {b}: {out['total_s'] / 60:.1f} min ({source})")
    self.status("projection", "done", "", started)

  # --- phase 5 ----------------------------------------------------------------------------

  def write_report(self) -> None:
    r = self.results
    rows = []
    for section in ("train_step", "layer_impl"):
      for name, row in r[section].items():
        if isinstance(row, dict) and "step_s" in row and "dtype" in row:
          rows.append(
              f"<tr><td>{html.escape(name)}</td><td>{row['dtype']}</td><td>{row['batch']}</td>"
              f"<td>{row['layer_impl']}</td><td>{row['step_s'] * 1e3:.1f}</td>"
              f"<td>{row['images_per_s']:.1f}</td><td>{row['compile_s']:.1f}</td>"
              f"<td>{_pct(row.get('mfu_vs_peak'))}</td><td>{_pct(row.get('mfu_vs_matmul'))}</td>"
              f"<td>{_gib(row.get('peak_memory_bytes'))}</td></tr>")
    env = r["environment"]
    bottle = r["bottle"]
    proj = r["projection"]
    status = "".join(f"<li>{html.escape(k)}: {html.escape(v['status'])}"
                     f"{' - ' + html.escape(v['reason']) if v.get('reason') else ''}</li>"
                     for k, v in r["phase_status"].items())
    overlays = "".join(f'<figure><img src="{html.escape(name)}" style="max-width:100%">'
                       f"<figcaption>{html.escape(name)}</figcaption></figure>"
                       for name in bottle.get("overlays", []))
    metrics = " / ".join(_pct(bottle.get(k), 1) for k in ("image_auroc", "pixel_auroc",
                                                          "pixel_ap", "aupro"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>draem-jax on {
        html.escape(env['device'])}</title><style>body{{font-family:sans-serif;margin:2em;
        max-width:70em}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}}
        table{{border-collapse:collapse}}</style></head><body>
<h1>draem-jax on {html.escape(env['device'])}</h1>
<p>jax {env['jax']}, jaxlib {env['jaxlib']}, commit {html.escape(env['commit'] or '?')},
{env['image_size']}x{env['image_size']}, widths {env['widths'][0]}/{env['widths'][1]};
layer_impl auto = {env['layer_impl_auto']}. Budget {r['suite']['budget_s']:.0f} s, used
{r['suite'].get('elapsed_s', 0):.0f} s.</p>
<h2>Train step</h2>
<p>MFU: training FLOPs ({r['flops'].get('train_per_image', 0) / 1e9:.1f} GFLOP per image)
per second against the published dense peak (float32 against {
    'TF32' if r['matmul'].get('float32_uses_tf32') else 'plain float32'}) and against a
measured {r['matmul'].get('n')}^3 matmul (bf16 {r['matmul'].get('bfloat16_tflops', 0):.0f},
f32 {r['matmul'].get('float32_default_tflops', 0):.0f} TFLOP/s).</p>
<table><tr><th>run</th><th>dtype</th><th>batch</th><th>layers</th><th>ms/step</th>
<th>images/s</th><th>compile s</th><th>MFU (peak)</th><th>MFU (matmul)</th><th>memory GiB</th>
</tr>{''.join(rows)}</table>
<h2>Simulator</h2><p>{html.escape(json.dumps(r['simulator']))}</p>
<h2>Bottle</h2><p>{bottle.get('epochs', 0)} epochs ({bottle.get('steps', 0)} steps) in
{bottle.get('wall_s', 0):.0f} s: image AUROC / pixel AUROC / pixel AP / AU-PRO = {metrics}
(paper, 700 epochs: 99.2 / 99.1 / 86.5).</p>
<h2>700 epochs</h2><p>{proj.get('total_s', float('nan')) / 60:.1f} min projected
({html.escape(str(proj.get('rate_source', '')))}); goal 10 min.</p>
<h2>Phases</h2><ul>{status}</ul>{overlays}</body></html>
"""
    fileio.atomic_write_text(self.out / REPORT_FILE, page)

  # --- driver -----------------------------------------------------------------------------

  def run(self) -> int:
    self.log(f"{self.device.device_kind} ({self.platform}), jax {jax.__version__}, budget "
             f"{self.args.budget_s:.0f} s, out {self.out}")
    self.save()
    failed = False
    for number, name, fn in ((1, "train_step", self.phase_train_step),
                             (2, "simulator", self.phase_simulator),
                             (3, "bottle", self.phase_bottle),
                             (4, "projection", self.phase_projection)):
      if number not in self.phases:
        self.results["phase_status"][name] = {"status": "not requested"}
        continue
      if self.remaining() < RESERVE_S:
        self.status(name, "skipped", f"budget spent ({self.elapsed():.0f} s of "
                    f"{self.args.budget_s:.0f} s)")
        continue
      try:
        fn()
      except Exception as e:  # pylint: disable=broad-except  # Keep what the others measure.
        failed = True
        self.log(traceback.format_exc())
        self.status(name, "failed", f"{type(e).__name__}: {e}"[:500])
    if 5 in self.phases:
      self.write_report()
    self.save()
    self.log(f"done in {self.elapsed():.1f} s; {self.out / RESULTS_FILE}")
    self.log_file.close()
    return 1 if failed else 0


def _pct(value, digits: int = 1) -> str:
  return "-" if value is None else f"{100 * value:.{digits}f}"


def _gib(value) -> str:
  return "-" if not value else f"{value / 2**30:.2f}"


def _jaxlib_version() -> str:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return ""


def main(argv=None) -> int:
  from draem_jax.errors import ConfigError, DataError  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  try:
    suite = Suite(args, start=_PROCESS_START)
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return suite.run()


if __name__ == "__main__":
  sys.exit(main())
