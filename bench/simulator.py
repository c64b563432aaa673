"""Anomaly simulator speed: jitted draem_jax.simulator vs a numpy per-sample implementation.

Per-sample wall time of one simulated batch (rotation, Perlin mask, three texture augmenters,
blend; DRAEM_SPEC section 4) at --size, for each batch size and batching mode of the jitted
simulator, next to bench/numpy_simulator.py (the same sampler in numpy, one sample after
another on the host, as a data loader would run it). Inputs are random uint8 images and
textures (the cost does not depend on the content). Compilation is excluded. A sample's cost
depends on its draws (half take the cheap clean branch; the augmenters differ ~10x in cost),
so each row is the mean over --repeats batches drawn with different keys (total time / total
samples: the sampler's expected cost), with the fastest batch in brackets.

  python bench/simulator.py --batch-sizes 8,32 --size 256 --repeats 10

Keep runs short on a shared machine; timings there vary by tens of percent between runs.
"CPU ms" is process CPU time (all threads: XLA splits large ops over the cores, numpy runs
on one), so "CPU speed-up" is the ratio per core-second. The last column counts minor page
faults (first touches of freshly allocated memory) per batch.
"""

import argparse
import dataclasses
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# pylint: disable=wrong-import-position
import numpy_simulator
from configs import mvtec
from draem_jax import simulator


def _time(fn, repeats):
  """fn(r) for r = 0..repeats-1: mean and fastest wall seconds, mean process CPU seconds and
  minor page faults per call."""
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  cpu = time.process_time()
  for r in range(repeats):
    start = time.perf_counter()
    fn(r)
    times.append(time.perf_counter() - start)
  cpu = (time.process_time() - cpu) / repeats
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
  return float(np.mean(times)), float(np.min(times)), cpu, faults


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-sizes", default="8,32", help="Comma-separated batch sizes.")
  parser.add_argument("--size", type=int, default=256, help="Square image side.")
  parser.add_argument("--repeats", type=int, default=10, help="Timed batches per row.")
  parser.add_argument("--modes", default="map,vmap",
                      help="Batching modes of the jitted simulator to time (map, vmap).")
  args = parser.parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  modes = args.modes.split(",")
  cfg = mvtec.get_config().simulator
  base = simulator.SimulatorConfig.from_config(cfg)
  rng = np.random.default_rng(0)

  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.default_backend()}, {args.size}x{args.size}, "
        f"mean (fastest) of {args.repeats} batches")
  rows = []
  for batch in batch_sizes:
    images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
    textures = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)

    np_rng = np.random.default_rng(1)
    np_mean, np_min, np_cpu, np_faults = _time(
        lambda r: numpy_simulator.simulate(np_rng, images, textures, cfg), args.repeats)
    rows.append((batch, "numpy per sample", np_mean / batch, np_min / batch, 1.0, 1.0,
                 np_cpu / batch, 1.0, np_faults))
    for mode in modes:
      c = dataclasses.replace(base, batching=mode)
      fn = jax.jit(lambda k, i, t, c=c: simulator.simulate(k, i, t, c))
      dev_images, dev_textures = jax.device_put(images), jax.device_put(textures)
      start = time.perf_counter()
      jax.block_until_ready(fn(jax.random.key(0), dev_images, dev_textures))
      compile_s = time.perf_counter() - start
      mean, low, cpu, faults = _time(lambda r, fn=fn: jax.block_until_ready(
          fn(jax.random.key(r + 1), dev_images, dev_textures)), args.repeats)
      rows.append((batch, f"jax jit, {mode} (compile {compile_s:.1f} s)", mean / batch,
                   low / batch, np_mean / mean, np_min / low, cpu / batch, np_cpu / cpu,
                   faults))

  print("| batch | implementation | ms / sample, mean (fastest batch) | speed-up vs numpy, mean "
        "(fastest) | CPU ms / sample | CPU speed-up | page faults / batch |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for batch, name, mean, low, ratio, ratio_min, cpu, cpu_ratio, faults in rows:
    print(f"| {batch} | {name} | {mean * 1e3:.2f} ({low * 1e3:.2f}) | "
          f"{ratio:.1f}x ({ratio_min:.1f}x) | {cpu * 1e3:.2f} | {cpu_ratio:.1f}x | {faults:.0f} |")


if __name__ == "__main__":
  main()
