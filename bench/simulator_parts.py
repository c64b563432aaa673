"""Where the anomaly simulator's time goes: configurations and parts, each jitted and timed.

Per-sample time at --size, batch --batch, looping over samples as the simulator does on CPU
(the parts with `lax.map`). First the whole simulator under configurations that switch its
branches on and off (each batch drawn with a new key; the differences are the cost of a
rotation, of a mask and blend, of three augmenters), then the masks alone
(`simulate_masks`), one bilinear rotation, and each of the ten texture augmenters applied to
every sample (mid-range parameters, passed as arguments so that XLA cannot fold them in).
Medians of --repeats batches after one warm-up, the rows taking turns; compare with
bench/simulator.py's total.

  python bench/simulator_parts.py --size 256 --batch 8
"""

import argparse
import dataclasses
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
from draem_jax.simulation import augment
from draem_jax.simulation import simulator


def per_sample_ms(rows, batch: int, repeats: int) -> list[float]:
  """Median milliseconds per sample of jit(fn)(r, *args) over r = 1..repeats, for each row.

  `r` lets a row draw a new batch per repeat; compilation and a warm-up call are excluded.
  The rows take turns repeat by repeat, so that a change in machine load hits them alike.
  """
  fns = []
  for _, fn, args in rows:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(0, *args))
    fns.append((fn, args))
  times = [[] for _ in rows]
  for r in range(1, repeats + 1):
    for n, (fn, args) in enumerate(fns):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(r, *args))
      times[n].append(time.perf_counter() - t0)
  return [1e3 * statistics.median(t) / batch for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  paper = simulator.SimulatorConfig.from_config(mvtec.get_config().simulator)
  b, s = args.batch, args.size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8))
  textures = jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8))
  x = textures.astype(jnp.float32)
  u = jnp.full((augment.NUM_UNIFORMS,), 0.5)
  angle = jnp.float32(30.0)

  def whole(**changes):
    c = dataclasses.replace(paper, **changes)
    return (lambda r, i, t: simulator.simulate(jax.random.key(r), i, t, c), (images, textures))

  rows = [
      ("simulator, paper config", *whole()),
      ("  no rotation, no anomaly", *whole(rotate_prob=0.0, anomaly_prob=0.0)),
      ("  every sample rotated, no anomaly", *whole(rotate_prob=1.0, anomaly_prob=0.0)),
      ("  every sample anomalous, no augmenter", *whole(rotate_prob=0.0, anomaly_prob=1.0,
                                                        num_augmenters=0)),
      ("  every sample anomalous, 3 augmenters", *whole(rotate_prob=0.0, anomaly_prob=1.0)),
      ("masks only", lambda r: simulator.simulate_masks(jax.random.key(r), b, (s, s), paper),
       ()),
      ("one rotation (30 degrees)",
       lambda r, t, a: jax.lax.map(lambda y: augment.rotate(y, a), t), (x, angle)),
  ]
  for index, name in enumerate(augment.AUGMENTER_NAMES):
    rows.append((f"augmenter {name}", lambda r, t, v, j=index: jax.lax.map(
        lambda y: augment.apply_augmenter(jnp.int32(j), v, y), t), (x, u)))
  print(f"{s}x{s}, batch {b}, jax {jax.__version__} on {jax.default_backend()}; "
        f"ms per sample, median of {args.repeats}, rows interleaved")
  for (name, _, _), ms in zip(rows, per_sample_ms(rows, b, args.repeats)):
    print(f"  {name:<40} {ms:7.2f}")


if __name__ == "__main__":
  main()
