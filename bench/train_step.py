"""Speed of the DRAEM train step and of inference: draem_jax (jit) vs PyTorch eager, one run.

Both frameworks run the same computation on the same machine in the same process, timed in
alternation (one JAX call, one PyTorch call, ...) so that load from other processes on a
shared machine hits both alike:

* train: forward R and D in training mode (BatchNorm batch statistics), l2 + (1 - SSIM) +
  focal loss, backward, Adam update. JAX: `draem_jax.training.train_step.make_train_step` jitted with
  the state donated, on a pre-simulated batch {'target', 'augmented', 'mask'}; PyTorch:
  bench/torch_draem.py with torch.optim.Adam.
* infer: forward R and D in eval mode (BatchNorm running statistics) and the anomaly map
  softmax(logits)[..., 1]. JAX: `draem_jax.models.predict` jitted; PyTorch under
  torch.inference_mode().

Times are medians over --repeats calls after --warmup calls; JAX compile time is reported
apart (ahead-of-time `lower().compile()`). Threads: PyTorch gets torch.set_num_threads(
--threads); XLA's CPU client runs its intra-op work on an Eigen pool with one thread per core
(it has no public thread-count knob; XLA_FLAGS=--xla_cpu_multi_thread_eigen=false makes it
single-threaded).

  python bench/train_step.py --size 128 --recon_width 64 --disc_width 32 --mode both
  python bench/train_step.py --size 256 --mode infer --repeats 2   # full-size inference

Never time the full-size (256x256, widths 128/64) train step on a small shared machine: it
takes minutes per step and ~16 GiB.
"""

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import mvtec  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from draem_jax.training import parallel
from draem_jax.training import train_step as ts  # pylint: disable=g-import-not-at-top,wrong-import-position


def peak_rss_gib() -> float:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fake_batch(args):
  """A pre-simulated batch: clean target, augmented input with a pasted square, mask (NHWC)."""
  rng = np.random.default_rng(0)
  s = args.size
  target = rng.uniform(size=(args.batch, s, s, 3)).astype(np.float32)
  mask = np.zeros((args.batch, s, s, 1), np.float32)
  mask[1::2, s // 4:s // 2, s // 4:3 * s // 4] = 1.0
  augmented = np.where(mask > 0, rng.uniform(size=target.shape), target).astype(np.float32)
  return {"target": target, "augmented": augmented, "mask": mask}


class JaxBench:
  """Jitted train step and predict of draem_jax."""

  def __init__(self, args, batch):
    config = mvtec.get_config()
    config.model.recon_width, config.model.disc_width = args.recon_width, args.disc_width
    config.model.dtype = "bfloat16" if args.precision == "bf16" else "float32"
    config.train.batch_size = args.batch
    self.model = models.create_model(config.model)
    self.mesh = parallel.make_mesh(jax.devices()[:1])
    self.compile_s = {}
    self.batch = parallel.global_batch(batch, self.mesh)
    if args.mode in ("train", "both"):
      tx = ts.make_optimizer(config.optim, 1000)
      self.state = ts.create_train_state(jax.random.key(0), self.model, tx,
                                         (args.size, args.size), self.mesh)
      step = ts.jit_train_step(ts.make_train_step(self.model, tx, config), self.mesh)
      t0 = time.perf_counter()
      self.step = step.lower(self.state, self.batch).compile()
      self.compile_s["train"] = time.perf_counter() - t0
    if args.mode in ("infer", "both"):
      self.variables = jax.jit(lambda k: models.init_variables(
          self.model, k, (1, args.size, args.size, 3)))(jax.random.key(0))
      predict = jax.jit(lambda v, x: models.predict(self.model, v, x),
                        compiler_options=models.xla_compiler_options(self.mesh))
      t0 = time.perf_counter()
      self.predict = predict.lower(self.variables, self.batch["augmented"]).compile()
      self.compile_s["infer"] = time.perf_counter() - t0

  def train(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)

  def infer(self):
    jax.block_until_ready(self.predict(self.variables, self.batch["augmented"]))


class TorchBench:
  """bench/torch_draem.py in eager mode."""

  def __init__(self, args, batch):
    import torch  # pylint: disable=g-import-not-at-top
    from bench import torch_draem  # pylint: disable=g-import-not-at-top
    self.torch, self.lib = torch, torch_draem
    torch.manual_seed(0)
    self.model = torch_draem.DRAEM(args.recon_width, args.disc_width)
    torch_draem.init_weights(self.model)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=fmt)
    to = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=fmt)
    self.x, self.y, self.m = to(batch["augmented"]), to(batch["target"]), to(batch["mask"])
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999),
                                eps=1e-8)
    self.bf16 = args.precision == "bf16"

  def _autocast(self):
    return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16)

  def train(self):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    with self._autocast():
      rec, logits = self.model(self.x)
    loss = self.lib.draem_loss(rec.float(), self.y, logits.float(), self.m)[0]
    loss.backward()
    self.opt.step()

  def infer(self):
    self.model.eval()
    with self.torch.inference_mode(), self._autocast():
      _, logits = self.model(self.x)
      self.torch.softmax(logits.float(), dim=1)[:, 1]


def cpu_seconds() -> float:
  """User + system CPU time of this process (all threads) so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_alternating(benches, fn_name, warmup, repeats, cpu_times=None):
  """{framework: [wall seconds per call]}, calling the frameworks in turn every round.

  The order rotates from round to round, so that no framework always runs right after
  another one (on a shared machine, whatever the previous call left behind in caches and in
  the allocator is shared out evenly). If `cpu_times` is a dict, it receives the process CPU
  seconds per call too: less sensitive than wall time to other processes' load (but it also
  counts threads that spin while waiting).
  """
  times = {name: [] for name in benches}
  names = list(benches)
  for r in range(warmup + repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      bench = benches[name]
      c0, t0 = cpu_seconds(), time.perf_counter()
      getattr(bench, fn_name)()
      dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
      if r >= warmup:
        times[name].append(dt)
        if cpu_times is not None:
          cpu_times.setdefault(name, []).append(dc)
      print(f"  {fn_name} {name} call {r + 1}/{warmup + repeats}: {dt:.3f} s (CPU {dc:.2f} s)"
            + (" (warm-up)" if r < warmup else ""), flush=True)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=128, help="Image side (multiple of 32).")
  parser.add_argument("--recon_width", type=int, default=128)
  parser.add_argument("--disc_width", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                      help="bf16: draem_jax model.dtype=bfloat16 / torch CPU autocast.")
  parser.add_argument("--repeats", type=int, default=4,
                      help="Timed calls per framework (even: each framework goes first as "
                      "often as second).")
  parser.add_argument("--warmup", type=int, default=1, help="Untimed calls first.")
  parser.add_argument("--frameworks", default="jax,torch")
  parser.add_argument("--channels_last", action="store_true", help="PyTorch NHWC memory.")
  parser.add_argument("--mode", choices=("train", "infer", "both"), default="both")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads.")
  parser.add_argument("--omp_wait_policy", default="PASSIVE",
                      help="OMP_WAIT_POLICY for PyTorch's OpenMP pool ('' = its default, "
                      "spinning). On a machine shared with other busy processes, spinning "
                      "OpenMP threads wait on descheduled peers at every barrier: PyTorch's "
                      "train step at 128x128, widths 32/16 took 11.5 s spinning, 3.8 s PASSIVE, "
                      "4.0 s on one thread.")
  args = parser.parse_args()
  if args.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # Read when torch starts OpenMP.
  frameworks = [f for f in args.frameworks.split(",") if f]

  batch = fake_batch(args)
  benches = {}
  if "torch" in frameworks:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    benches["torch"] = TorchBench(args, batch)
  if "jax" in frameworks:
    t0 = time.perf_counter()
    benches["jax"] = JaxBench(args, batch)
    print(f"JAX set-up {time.perf_counter() - t0:.1f} s; compile: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in benches["jax"].compile_s.items()),
          flush=True)
  modes = ["train", "infer"] if args.mode == "both" else [args.mode]
  results = {}
  for mode in modes:
    results[mode] = time_alternating(benches, mode, args.warmup, args.repeats)
    print(f"  peak RSS after {mode}: {peak_rss_gib():.2f} GiB", flush=True)

  print(f"\n{args.size}x{args.size}, widths {args.recon_width}/{args.disc_width}, batch "
        f"{args.batch}, {args.precision}{', torch channels_last' if args.channels_last else ''}"
        f"; {os.cpu_count()} cores, torch threads {args.threads}, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '')!r}, GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '')!r}; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}; jax {jax.__version__}"
        + (f", torch {benches['torch'].torch.__version__}" if "torch" in benches else ""))
  print(f"median of {args.repeats} after {args.warmup} warm-up (min in brackets), seconds:")
  header = f"{'mode':<6}" + "".join(f"{f:>18}" for f in benches) + (
      f"{'jax/torch':>11}" if len(benches) == 2 else "")
  print(header)
  for mode, times in results.items():
    med = {f: statistics.median(t) for f, t in times.items()}
    row = f"{mode:<6}" + "".join(f"{med[f]:>10.3f} [{min(times[f]):5.2f}]" for f in benches)
    if len(benches) == 2:
      row += f"{med['jax'] / med['torch']:>11.2f}"
    print(row)
  if "jax" in benches:
    print("JAX compile (s): " + ", ".join(f"{k} {v:.1f}"
                                          for k, v in benches["jax"].compile_s.items()))
  print(f"peak RSS of the process (both frameworks): {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
  main()
