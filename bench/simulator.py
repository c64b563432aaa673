"""Anomaly simulator speed: jitted draem_jax.simulation.simulator vs a numpy per-sample implementation.

Per-sample wall time of one simulated batch (rotation, Perlin mask, three texture augmenters,
blend; DRAEM_SPEC section 4) at --size, for each batch size and batching mode of the jitted
simulator, next to bench/numpy_simulator.py (the same sampler in numpy, one sample after
another on the host, as a data loader would run it). Inputs are random uint8 images and
textures (the cost does not depend on the content). Compilation is excluded. A sample's cost
depends on its draws (half take the cheap clean branch; the augmenters differ ~10x in cost),
so each row is the mean over --repeats batches drawn with different keys (total time / total
samples: the sampler's expected cost), with the fastest batch in brackets. The
implementations take turns batch by batch, so that a change in machine load hits them alike.

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
from draem_jax.simulation import simulator


def _time_interleaved(fns, repeats):
  """Calls every fn(r) once per round r = 0..repeats-1, in turn, so that all of them run under
  the same machine load (on a shared machine it drifts by tens of percent within a minute).

  Returns:
    for each fn: mean and fastest wall seconds, mean process CPU seconds and minor page faults
    per call.
  """
  times = [[] for _ in fns]
  cpu = [0.0 for _ in fns]
  faults = [0 for _ in fns]
  for r in range(repeats):
    for n, fn in enumerate(fns):
      faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      cpu_before = time.process_time()
      start = time.perf_counter()
      fn(r)
      times[n].append(time.perf_counter() - start)
      cpu[n] += time.process_time() - cpu_before
      faults[n] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
  return [(float(np.mean(t)), float(np.min(t)), c / repeats, f / repeats)
          for t, c, f in zip(times, cpu, faults)]


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
        f"mean (fastest) of {args.repeats} batches, implementations interleaved")
  rows = []
  for batch in batch_sizes:
    images = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
    textures = rng.integers(0, 256, (batch, args.size, args.size, 3), dtype=np.uint8)
    np_rng = np.random.default_rng(1)
    names = ["numpy per sample"]
    fns = [lambda r: numpy_simulator.simulate(np_rng, images, textures, cfg)]
    dev_images, dev_textures = jax.device_put(images), jax.device_put(textures)
    # Made before timing: creating a key is a dispatch of its own (~0.6 ms on this CPU); in
    # training the key is derived inside the jitted step.
    keys = [jax.random.key(r + 1) for r in range(args.repeats)]
    for mode in modes:
      c = dataclasses.replace(base, batching=mode)
      fn = jax.jit(lambda k, i, t, c=c: simulator.simulate(k, i, t, c))
      start = time.perf_counter()
      jax.block_until_ready(fn(jax.random.key(0), dev_images, dev_textures))
      names.append(f"jax jit, {mode} (compile {time.perf_counter() - start:.1f} s)")
      fns.append(lambda r, fn=fn: jax.block_until_ready(fn(keys[r], dev_images, dev_textures)))
    results = _time_interleaved(fns, args.repeats)
    np_mean, np_min, np_cpu, _ = results[0]
    for name, (mean, low, cpu, faults) in zip(names, results):
      rows.append((batch, name, mean / batch, low / batch, np_mean / mean, np_min / low,
                   cpu / batch, np_cpu / cpu, faults))

  print("| batch | implementation | ms / sample, mean (fastest batch) | speed-up vs numpy, mean "
        "(fastest) | CPU ms / sample | CPU speed-up | page faults / batch |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for batch, name, mean, low, ratio, ratio_min, cpu, cpu_ratio, faults in rows:
    print(f"| {batch} | {name} | {mean * 1e3:.2f} ({low * 1e3:.2f}) | "
          f"{ratio:.1f}x ({ratio_min:.1f}x) | {cpu * 1e3:.2f} | {cpu_ratio:.1f}x | {faults:.0f} |")


if __name__ == "__main__":
  main()
