"""Where the anomaly simulator's time goes: each part jitted and timed on its own.

Per-sample time (median of --repeats batches after one warm-up) at --size, batch --batch,
looping over samples with `lax.map` as the simulator does on CPU: the whole `simulate`, the
masks alone (`simulate_masks`), one bilinear rotation, and each of the ten texture augmenters
applied to every sample (with mid-range parameters). Compare with bench/simulator.py's total.

  python bench/simulator_parts.py --size 256 --batch 8
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from configs import mvtec
from draem_jax import augment, simulator


def per_sample_ms(fn, args, batch: int, repeats: int) -> float:
  """Median milliseconds per sample of jit(fn)(*args), compilation and warm-up excluded."""
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times) / batch


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  cfg = mvtec.get_config().simulator
  b, s = args.batch, args.size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8))
  textures = jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8))
  key = jax.random.key(0)
  x = textures.astype(jnp.float32)
  u = jnp.full((augment.NUM_UNIFORMS,), 0.5)
  angle = jnp.float32(30.0)
  # Parameters are arguments, not constants, so that XLA cannot fold the work that depends
  # on them alone (a rotation's coordinates, a gamma table) into the program.
  rows = [
      ("whole simulator", lambda k, i, t: simulator.simulate(k, i, t, cfg),
       (key, images, textures)),
      ("masks only", lambda k: simulator.simulate_masks(k, b, (s, s), cfg), (key,)),
      ("one rotation (30 degrees)",
       lambda t, a: jax.lax.map(lambda y: augment.rotate(y, a), t), (x, angle)),
  ]
  for index, name in enumerate(augment.AUGMENTER_NAMES):
    rows.append((f"augmenter {name}", lambda t, v, j=index: jax.lax.map(
        lambda y: augment.apply_augmenter(jnp.int32(j), v, y), t), (x, u)))
  print(f"{s}x{s}, batch {b}, jax {jax.__version__} on {jax.default_backend()}; "
        f"ms per sample, median of {args.repeats}")
  for name, fn, fn_args in rows:
    print(f"  {name:<36} {per_sample_ms(fn, fn_args, b, args.repeats):7.2f}", flush=True)


if __name__ == "__main__":
  main()
