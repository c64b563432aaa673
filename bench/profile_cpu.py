"""Where the CPU time of the draem_jax train step / inference goes, and what each speed-up buys.

Two tools:

* `--ablation`: the JAX train step (or inference) compiled in several variants, each with
  one of draem_jax's CPU optimisations reverted to the straightforward formulation, timed in
  alternation in one process together with PyTorch eager (bench/torch_draem.py), so that the
  load of other processes on a shared machine hits all variants alike:
    current        draem_jax as it is;
    ynn_convs      XLA:CPU's default YNNPACK convolutions (no `models.xla_compiler_options`);
    nn_max_pool    `flax.linen.max_pool` (its gradient is a select-and-scatter);
    nn_batch_norm  `flax.linen.BatchNorm` (autodiff through its reductions);
    einsum_upsample  dense interpolation matrices (einsum) for the bilinear x2 upsampling;
    baseline       all four reverted (the first straightforward port).
* `--profile`: one call under `jax.profiler`, XLA ops aggregated by layer kind (BatchNorm,
  upsampling, ...) and the slowest ops listed. XLA:CPU's convolution and dot thunks run
  asynchronously on the intra-op pool and are not in the trace: their time is the step time
  minus the listed ops (roughly; other ops overlap with them).

  python bench/profile_cpu.py --ablation --size 128 --recon_width 64 --disc_width 32
  python bench/profile_cpu.py --profile --size 128 --recon_width 64 --disc_width 32

Keep runs short on shared machines: every variant compiles (~20 s) and runs warmup + repeats
steps.
"""

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from bench import train_step as bench_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def _einsum_upsample(x):
  """The straightforward port: dense (2n x n) interpolation matrices along H and W."""
  _, h, w, _ = x.shape
  mh = jnp.asarray(models.align_corners_matrix(h, 2 * h), x.dtype)
  mw = jnp.asarray(models.align_corners_matrix(w, 2 * w), x.dtype)
  return jnp.einsum("pw,bowc->bopc", mw, jnp.einsum("oh,bhwc->bowc", mh, x))


def _flax_batch_norm(use_running_average, dtype, name):
  return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, scale_init=models.bn_scale_init, name=name)


REVERSIONS = {
    "ynn_convs": {"xla_compiler_options": lambda mesh: None},
    "nn_max_pool": {"_max_pool": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))},
    "nn_batch_norm": {"BatchNorm": _flax_batch_norm},
    "einsum_upsample": {"upsample2x_align_corners": _einsum_upsample},
}
REVERSIONS["baseline"] = {k: v for r in list(REVERSIONS.values()) for k, v in r.items()}


@contextlib.contextmanager
def reverted(name):
  """Temporarily replaces attributes of draem_jax.models and of the modules where they are
  looked up while tracing (models.layers, models.networks)."""
  patch = REVERSIONS.get(name, {})
  modules = (models, models.layers, models.networks)
  saved = [(m, k, getattr(m, k)) for m in modules for k in patch if hasattr(m, k)]
  for m, k, _ in saved:
    setattr(m, k, patch[k])
  try:
    yield
  finally:
    for m, k, v in saved:
      setattr(m, k, v)


def ablation(args, batch):
  mode = args.mode
  benches = {}
  if "torch" in args.frameworks:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    benches["torch"] = bench_lib.TorchBench(args, batch)
  for variant in dict.fromkeys(args.variants.split(",")):
    with reverted(variant):  # The step is traced and compiled inside JaxBench.
      t0 = time.perf_counter()
      benches[variant] = bench_lib.JaxBench(args, batch)
      print(f"compiled {variant} in {time.perf_counter() - t0:.1f} s", flush=True)
  cpu = {}
  times = bench_lib.time_alternating(benches, mode, args.warmup, args.repeats, cpu)
  ref = statistics.median(times["torch"]) if "torch" in times else None
  print(f"\n{mode}, {args.size}x{args.size}, widths {args.recon_width}/{args.disc_width}, "
        f"batch {args.batch}; median of {args.repeats} (min), seconds; process CPU seconds")
  for name, t in times.items():
    ratio = f"  jax/torch {statistics.median(t) / ref:.2f}" if ref and name != "torch" else ""
    print(f"{name:<16} {statistics.median(t):8.3f} [{min(t):6.3f}]  CPU "
          f"{statistics.median(cpu[name]):7.2f}{ratio}")


def _categorise(op_name):
  kinds = [("upsample", r"upsample|oh,bhwc|pw,bowc|take"), ("ssim blur", r"ih,bhwc|jw,biwc"),
           ("batch norm", r"/bn/"), ("relu", r"relu"), ("max pool", r"max_pool|reduce_max"),
           ("conv (bias, layout)", r"/conv/|/final/"), ("concatenate", r"concatenate"),
           ("loss", r"ssim|focal|l2|softmax|log|square"), ("optimizer", r"adam|optax|update")]
  for kind, pattern in kinds:
    if re.search(pattern, op_name):
      return kind
  return "unattributed (layout copies for convolutions, ...)"


def profile(args, batch):
  bench = bench_lib.JaxBench(args, batch)
  fn = getattr(bench, args.mode)
  compiled = bench.step if args.mode == "train" else bench.predict
  fn()
  fn()
  t0 = time.perf_counter()
  fn()
  wall = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      fn()
    trace = json.load(gzip.open(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]))
  op_names = {}
  for line in compiled.as_text().split("\n"):
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
    if m:
      meta = re.search(r'op_name="([^"]+)"', line)
      op_names[m.group(1)] = (meta.group(1) if meta else "", m.group(2))
  per_kind, ops = collections.defaultdict(float), []
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and e["name"] in op_names:
      op, shape = op_names[e["name"]]
      direction = "backward" if "transpose(" in op else "forward"
      per_kind[f"{_categorise(op)} {direction}"] += e["dur"] / 1e3
      ops.append((e["dur"] / 1e3, e["name"], shape, op[-90:]))
  print(f"{args.mode}: {wall:.2f} s per call; traced XLA ops (convolutions and dots not "
        f"included) {sum(per_kind.values()) / 1e3:.2f} s")
  for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
    print(f"  {ms:8.1f} ms  {kind}")
  print("slowest ops:")
  for ms, name, shape, op in sorted(ops, reverse=True)[:args.top]:
    print(f"  {ms:7.1f} ms  {name:<32} {shape:<28} {op}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ablation", action="store_true")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--recon_width", type=int, default=64)
  parser.add_argument("--disc_width", type=int, default=32)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--mode", choices=("train", "infer"), default="train")
  parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
  parser.add_argument("--variants", default="current,baseline,ynn_convs,nn_max_pool,"
                      "nn_batch_norm,einsum_upsample")
  parser.add_argument("--frameworks", default="jax,torch",
                      help="Include 'torch' for the PyTorch reference in --ablation.")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--top", type=int, default=20, help="Slowest ops listed by --profile.")
  args = parser.parse_args()
  args.channels_last = False
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # See bench/train_step.py.
  batch = bench_lib.fake_batch(args)
  if args.ablation:
    ablation(args, batch)
  if args.profile:
    profile(args, batch)


if __name__ == "__main__":
  main()
