"""CPU inference of the full-size model: JAX, ONNX Runtime, OpenVINO and PyTorch eager.

All backends compute the deployment function `image (N, S, S, 3) -> (anomaly_map, score)` of
the same weights (random initialisation: speed does not depend on the values) in one process,
called in alternation round by round (the order rotates) so that the load of a shared machine
moves every row alike; the table gives the median seconds per call and per image and the
ratio to PyTorch eager. PyTorch is `bench/torch_draem.py` (its own layers), run under
`inference_mode` and computing the softmax map and the mean-filter score too.

  python bench/deploy.py --size 256 --batches 1,8 --repeats 2
  python bench/deploy.py --memory        # peak RSS of each backend, each in its own process

Also writes the ONNX file under bench/out/ and reports its size.
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

BACKENDS = ("jax", "ort_basic", "ort_all", "openvino", "torch")


def _jax_fn(model, variables, filter_size):
  import jax  # pylint: disable=g-import-not-at-top
  from draem_jax import evaluation, models, parallel  # pylint: disable=g-import-not-at-top
  predict = evaluation.make_predict_fn(model, filter_size)
  mesh = parallel.make_mesh(jax.devices()[:1])
  jitted = jax.jit(predict, compiler_options=models.xla_compiler_options(mesh))
  return lambda x: jax.block_until_ready(jitted(variables, x))


def _export_onnx(model, variables, filter_size, size, path: Path) -> Path:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from draem_jax import evaluation, export  # pylint: disable=g-import-not-at-top
  host = jax.device_get(variables)
  predict = evaluation.make_predict_fn(model, filter_size)
  proto = export.onnx_model(lambda x: predict(host, x.astype(jnp.float32)), "N", size)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(proto.SerializeToString())
  return path


def _ort_fn(path: Path, level: str, threads: int):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.graph_optimization_level = {
      "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
      "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
  options.intra_op_num_threads = threads
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


def build(names, args):
  """{backend: fn(x)} and the ONNX file's size."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import mvtec  # pylint: disable=g-import-not-at-top
  from draem_jax import models  # pylint: disable=g-import-not-at-top
  config = mvtec.get_config()
  config.model.recon_width, config.model.disc_width = args.recon_width, args.disc_width
  model = models.create_model(config.model)
  variables = jax.jit(lambda k: models.init_variables(
      model, k, (1, args.size, args.size, 3)))(jax.random.key(0))
  fns, info = {}, {}
  onnx_path = (REPO / "bench" / "out"
               / f"draem_{args.size}_{args.recon_width}_{args.disc_width}.onnx")
  if any(n.startswith(("ort", "openvino")) for n in names):
    t0 = time.perf_counter()
    _export_onnx(model, variables, args.mean_filter_size, args.size, onnx_path)
    info["export_s"] = time.perf_counter() - t0
    info["onnx_mib"] = onnx_path.stat().st_size / 2**20
  for name in names:
    if name == "jax":
      fns[name] = _jax_fn(model, variables, args.mean_filter_size)
    elif name.startswith("ort"):
      fns[name] = _ort_fn(onnx_path, name.split("_")[1], args.threads)
    elif name == "openvino":
      try:
        fns[name] = _openvino_fn(onnx_path)
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


def memory_mode(args):
  """Peak RSS of each backend alone at batch max(batches), each in a fresh process."""
  rows = {}
  for name in args.backends.split(","):
    cmd = [sys.executable, __file__, "--backends", name, "--batches", args.batches.split(",")[-1],
           "--repeats", "1", "--warmup", "1", "--size", str(args.size), "--recon_width",
           str(args.recon_width), "--disc_width", str(args.disc_width), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
      print(f"{name}: failed\n{done.stderr[-2000:]}")
      continue
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows[name] = result["peak_rss_gib"]
    print(f"{name:10s} peak RSS {rows[name]:.2f} GiB", flush=True)
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
  parser.add_argument("--json", action="store_true", help="Print one JSON line at the end.")
  args = parser.parse_args()
  if args.memory:
    memory_mode(args)
    return
  fns, info = build(args.backends.split(","), args)
  if "onnx_mib" in info:
    print(f"ONNX file {info['onnx_mib']:.1f} MiB (export {info['export_s']:.1f} s)", flush=True)
  results = {}
  rng = np.random.default_rng(0)
  for batch in (int(b) for b in args.batches.split(",")):
    x = rng.uniform(0, 1, (batch, args.size, args.size, 3)).astype(np.float32)
    if "jax" in fns:  # Same function everywhere: the largest difference to JAX's outputs.
      ref_map, ref_score = (np.asarray(a) for a in fns["jax"](x))
      for name, fn in fns.items():
        if name == "torch":  # Its own (random) weights: a speed reference only.
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"results": results, "peak_rss_gib": peak, **info}))


if __name__ == "__main__":
  main()
