"""CPU inference of the full-size model: JAX, ONNX Runtime, OpenVINO and PyTorch eager.

All backends compute the deployment function `image (N, S, S, 3) -> (anomaly_map, score)` of
the same weights (random initialisation: speed does not depend on the values) in one process,
called in alternation round by round (the order rotates) so that the load of a shared machine
moves every row alike; the table gives the median seconds per call and per image and the
ratio to PyTorch eager. PyTorch is `bench/torch_draem.py` (its own layers), run under
`inference_mode` and computing the softmax map and the mean-filter score too.

  python bench/deploy.py --size 256 --batches 1,8 --repeats 2
  python bench/deploy.py --memory        # peak RSS of each backend, each in its own process

Also writes the ONNX files under bench/out/ (float, and the 8-bit model of export.py --int8,
rows `ort_int8` and `openvino_int8`, calibrated on random images: their speed, not their
outputs, means something)
and reports their sizes.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BACKENDS = ("jax", "ort_basic", "ort_all", "ort_int8", "openvino", "openvino_int8", "torch")


def _jax_fn(model, variables, filter_size):
  import jax  # pylint: disable=g-import-not-at-top
  from draem_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from draem_jax import models
  from draem_jax.training import parallel
  predict = evaluator.make_predict_fn(model, filter_size)
  mesh = parallel.make_mesh(jax.devices()[:1])
  jitted = jax.jit(predict, compiler_options=models.xla_compiler_options(mesh))
  return lambda x: jax.block_until_ready(jitted(variables, x))


def _export_onnx(model, variables, filter_size, size, path: Path) -> Path:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from draem_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from draem_jax.deployment import export
  host = jax.device_get(variables)
  predict = evaluator.make_predict_fn(model, filter_size)
  proto = export.onnx_model(lambda x: predict(host, x.astype(jnp.float32)), "N", size)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(proto.SerializeToString())
  return path


def _quantize(onnx_path: Path, variables, size: int) -> Path:
  """The 8-bit model of export.py --int8 (`draem_jax.deployment.quantize`), calibrated on 8 random
  images: the weights are random too, so only its speed and size mean anything."""
  from draem_jax.deployment import export  # pylint: disable=g-import-not-at-top
  from draem_jax.deployment import quantize
  images = np.random.default_rng(1).uniform(0, 1, (8, size, size, 3)).astype(np.float32)
  return quantize.quantize(onnx_path, onnx_path.with_suffix(".int8.onnx"), images,
                           export.num_recon_convs(variables))


def _ort_fn(path: Path, level: str, threads: int):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.graph_optimization_level = {
      "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
      "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
  options.intra_op_num_threads = threads
  # Its threads otherwise spin after each call and slow whichever backend runs next.
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  return lambda x: session.run(None, {"image": x})


def _openvino_fn(path: Path):
  import openvino as ov  # pylint: disable=g-import-not-at-top
  compiled = ov.Core().compile_model(str(path), "CPU")
  return lambda x: compiled(x)


def _torch_fn(recon_width, disc_width, filter_size, threads):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from bench import torch_draem  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  net = torch_draem.DRAEM(recon_width, disc_width)
  torch_draem.init_weights(net)
  net.eval()

  def run(x):
    with torch.inference_mode():
      _, logits = net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
      maps = torch.softmax(logits, dim=1)[:, 1:]
      pooled = F.avg_pool2d(maps, filter_size, stride=1, padding=filter_size // 2,
                            count_include_pad=True)
      return maps[:, 0].numpy(), pooled.amax(dim=(1, 2, 3)).numpy()

  return run


def _model(args):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import mvtec  # pylint: disable=g-import-not-at-top
  from draem_jax import models  # pylint: disable=g-import-not-at-top
  config = mvtec.get_config()
  config.model.recon_width, config.model.disc_width = args.recon_width, args.disc_width
  model = models.create_model(config.model)
  variables = jax.jit(lambda k: models.init_variables(
      model, k, (1, args.size, args.size, 3)))(jax.random.key(0))
  return model, variables


def write_onnx_files(names, args):
  """(float ONNX path, 8-bit ONNX path, info): the files the backends `names` read, written
  under bench/out/ unless args.reuse finds them there (then a process running ONNX Runtime or
  OpenVINO alone never imports JAX: --memory measures them so)."""
  info = {}
  onnx_path = (REPO / "bench" / "out"
               / f"draem_{args.size}_{args.recon_width}_{args.disc_width}.onnx")
  int8_path = onnx_path.with_suffix(".int8.onnx")
  wants_onnx = any(n.startswith(("ort", "openvino")) for n in names)
  make_onnx = wants_onnx and not (args.reuse and onnx_path.is_file())
  wants_int8 = any(n.endswith("int8") for n in names)
  make_int8 = wants_int8 and not (args.reuse and int8_path.is_file())
  if make_onnx or make_int8:
    model, variables = _model(args)
  if make_onnx:
    t0 = time.perf_counter()
    _export_onnx(model, variables, args.mean_filter_size, args.size, onnx_path)
    info["export_s"] = time.perf_counter() - t0
  if make_int8:
    t0 = time.perf_counter()
    _quantize(onnx_path, variables, args.size)
    info["quantize_s"] = time.perf_counter() - t0
  if wants_onnx:
    info["onnx_mib"] = onnx_path.stat().st_size / 2**20
  if wants_int8:
    info["int8_onnx_mib"] = int8_path.stat().st_size / 2**20
  return onnx_path, int8_path, info


def build(names, args):
  """{backend: fn(x)} and the ONNX files' sizes (`write_onnx_files`)."""
  onnx_path, int8_path, info = write_onnx_files(names, args)
  fns = {}
  if "jax" in names:
    model, variables = _model(args)
  for name in names:
    if name == "jax":
      fns[name] = _jax_fn(model, variables, args.mean_filter_size)
    elif name == "ort_int8":
      fns[name] = _ort_fn(int8_path, "all", args.threads)
    elif name.startswith("ort"):
      fns[name] = _ort_fn(onnx_path, name.split("_")[1], args.threads)
    elif name.startswith("openvino"):
      try:
        fns[name] = _openvino_fn(int8_path if name.endswith("int8") else onnx_path)
      except ImportError:
        print("openvino is not installed: its row is skipped.", flush=True)
    elif name == "torch":
      fns[name] = _torch_fn(args.recon_width, args.disc_width, args.mean_filter_size,
                            args.threads)
  return fns, info


def time_rounds(fns, x, repeats, warmup):
  names = list(fns)
  for name in names:  # Warm-up (compilation, allocator, graph caches): untimed.
    for _ in range(warmup):
      fns[name](x)
  times = {n: [] for n in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      fns[name](x)
      times[name].append(time.perf_counter() - t0)
  return {n: statistics.median(t) for n, t in times.items()}


def _peak_rss_gib() -> float:
  """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss on Linux, it
  does not carry the parent's peak across fork + exec)."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 2**20  # kB -> GiB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_mode(args):
  """Peak RSS (and seconds per image) of each backend alone at batch max(batches), each in a
  fresh process that loads the ONNX files written here first (so no ONNX process holds JAX
  or the export); --repeats rounds after --warmup, median."""
  # Files only, no sessions: each child measures its own peak (`_peak_rss_gib`).
  write_onnx_files([n for n in args.backends.split(",") if n.startswith(("ort", "openvino"))],
                   args)
  rows = {}
  for name in args.backends.split(","):
    cmd = [sys.executable, __file__, "--backends", name, "--reuse",
           "--batches", args.batches.split(",")[-1],
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--size",
           str(args.size), "--recon_width",
           str(args.recon_width), "--disc_width", str(args.disc_width), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
      print(f"{name}: failed\n{done.stderr[-2000:]}")
      continue
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows[name] = result["peak_rss_gib"]
    (batch, times), = result["results"].items()
    print(f"{name:10s} peak RSS {rows[name]:.2f} GiB, alone {times[name] / int(batch):.2f} "
          "s/image", flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--recon_width", type=int, default=128)
  parser.add_argument("--disc_width", type=int, default=64)
  parser.add_argument("--mean_filter_size", type=int, default=21)
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--backends", default=",".join(BACKENDS))
  parser.add_argument("--memory", action="store_true", help="Peak RSS per backend instead.")
  parser.add_argument("--reuse", action="store_true",
                      help="Use the ONNX files under bench/out/ if they exist.")
  parser.add_argument("--json", action="store_true", help="Print one JSON line at the end.")
  args = parser.parse_args()
  if args.memory:
    memory_mode(args)
    return
  fns, info = build(args.backends.split(","), args)
  if "onnx_mib" in info:
    print(f"ONNX file {info['onnx_mib']:.1f} MiB (export {info.get('export_s', 0):.1f} s)",
          flush=True)
  if "int8_onnx_mib" in info:
    print(f"8-bit ONNX file {info['int8_onnx_mib']:.1f} MiB (quantization "
          f"{info.get('quantize_s', 0):.1f} s)", flush=True)
  results = {}
  rng = np.random.default_rng(0)
  for batch in (int(b) for b in args.batches.split(",")):
    x = rng.uniform(0, 1, (batch, args.size, args.size, 3)).astype(np.float32)
    if "jax" in fns:  # Same function everywhere: the largest difference to JAX's outputs.
      ref_map, ref_score = (np.asarray(a) for a in fns["jax"](x))
      for name, fn in fns.items():
        if name == "torch" or name.endswith("int8"):  # Other weights / 8-bit: speed only.
          continue
        got_map, got_score = (np.asarray(a) for a in fn(x)[:2]) if name != "openvino" else (
            np.asarray(v) for v in fn(x).values())
        print(f"batch {batch} {name}: max |map - jax| {np.max(np.abs(got_map - ref_map)):.2e}, "
              f"max |score - jax| {np.max(np.abs(got_score - ref_score)):.2e}", flush=True)
    med = time_rounds(fns, x, args.repeats, args.warmup)
    results[batch] = med
    ref = med.get("torch")
    print(f"batch {batch}: " + ", ".join(
        f"{n} {t:.2f} s ({t / batch:.2f} s/image"
        + (f", {t / ref:.2f}x torch's time)" if ref else ")") for n, t in med.items()), flush=True)
  if args.json:
    print(json.dumps({"results": results, "peak_rss_gib": _peak_rss_gib(), **info}))


if __name__ == "__main__":
  main()
