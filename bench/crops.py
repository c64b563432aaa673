"""Cost of training on crops and scoring whole images or tiles, vs whole 64x64 images; one run.

Train step (the real one: crops, anomaly simulator on the device, R + D forward and backward,
Adam), batch --batch, widths --recon_width/--disc_width, one CPU device:
  64         whole 64x64 images (configs/mvtec_cpu.py)
  256/c64    64x64 crops of 256x256 images (configs/mvtec_cpu_crops.py)
  256/c96    96x96 crops of 256x256 images
Evaluation (the evaluator's predict function: maps and image scores), per pixel:
  64         whole 64x64 images, 5x5 filter
  256        whole 256x256 images, 21x21 filter (eval.mean_filter_fraction = 21/256)
  256/t64    256x256 images in 64x64 tiles overlapping by a quarter (configs/mvtec_cpu_crops.py)

The variants are timed in alternation (bench/train_step.py's `time_alternating`), so that load
from other processes on a shared machine hits them alike; the ratios to the 64x64 row are the
result.

  python bench/crops.py
  python bench/crops.py --repeats 6 --train_variants 64,256/c64
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.train_step import time_alternating  # noqa: E402
from configs import mvtec  # noqa: E402
from draem_jax import models  # noqa: E402
from draem_jax.evaluation import evaluator  # noqa: E402
from draem_jax.simulation import simulator  # noqa: E402
from draem_jax.training import parallel  # noqa: E402
from draem_jax.training import train_step as ts  # noqa: E402

# name -> (image side, crop side or 0).
TRAIN_VARIANTS = {"64": (64, 0), "256/c64": (256, 64), "256/c96": (256, 96)}
# name -> (image side, tile side or 0).
EVAL_VARIANTS = {"64": (64, 0), "256": (256, 0), "256/t64": (256, 64)}


class TrainBench:
  """One jitted train step on a fixed raw batch (images and textures, uint8)."""

  def __init__(self, args, image: int, crop: int):
    config = mvtec.get_config()
    config.model.recon_width, config.model.disc_width = args.recon_width, args.disc_width
    config.train.batch_size = args.batch
    config.data.image_size, config.data.crop_size = image, crop
    config.simulator.batching = "map"  # What "auto" picks on CPU.
    rng = np.random.default_rng(0)
    side = crop or image
    batch = {"image": rng.integers(0, 256, (args.batch, image, image, 3), dtype=np.uint8),
             "texture": rng.integers(0, 256, (args.batch, side, side, 3), dtype=np.uint8)}
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = models.create_model(config.model)
    tx = ts.make_optimizer(config.optim, 1000)
    self.state = ts.create_train_state(jax.random.key(0), model, tx, (side, side), mesh)
    self.batch = parallel.global_batch(batch, mesh)
    step = ts.jit_train_step(ts.make_train_step(model, tx, config, simulate=simulator.simulate),
                             mesh)
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.pixels = args.batch * side * side

  def run(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)


class EvalBench:
  """The evaluator's jitted predict function on a fixed batch of uint8 images."""

  def __init__(self, args, image: int, tile: int):
    model = models.DRAEM(args.recon_width, args.disc_width)
    mesh = parallel.make_mesh(jax.devices()[:1])
    variables = jax.jit(lambda k: models.init_variables(model, k, (1, 64, 64, 3)))(
        jax.random.key(0))
    predict = evaluator.make_predict_fn(model, 21, mean_filter_fraction=21 / 256,
                                        tile_size=tile, tile_overlap=0.25)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, image, image, 3),
                                               dtype=np.uint8)
    self.args = (variables, parallel.global_batch({"image": images}, mesh)["image"])
    t0 = time.perf_counter()
    self.predict = evaluator.jit_predict_fn(predict, mesh).lower(*self.args).compile()
    self.compile_s = time.perf_counter() - t0
    self.pixels = args.batch * image * image

  def run(self):
    jax.block_until_ready(self.predict(*self.args))


def _table(title: str, benches: dict, times: dict, cpu: dict, reference: str) -> None:
  """Wall and process-CPU seconds per call and their ratios to `reference`, per call and per
  pixel. On a machine shared with other jobs the CPU seconds are the steadier measure: a long
  call is preempted more often than a short one, which inflates its wall time."""
  print(f"\n{title}")
  print(f"{'variant':<10}{'wall s':>9}{'[min]':>8}{'ratio':>7}{'/pixel':>8}{'CPU s':>8}"
        f"{'ratio':>7}{'/pixel':>8}{'compile s':>11}")
  wall = {k: statistics.median(v) for k, v in times.items()}
  cpus = {k: statistics.median(v) for k, v in cpu.items()}
  px = {k: benches[k].pixels / benches[reference].pixels for k in benches}
  for k in benches:
    w, c = wall[k] / wall[reference], cpus[k] / cpus[reference]
    print(f"{k:<10}{wall[k]:>9.3f}{min(times[k]):>8.3f}{w:>7.2f}{w / px[k]:>8.2f}"
          f"{cpus[k]:>8.3f}{c:>7.2f}{c / px[k]:>8.2f}{benches[k].compile_s:>11.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--recon_width", type=int, default=32)
  parser.add_argument("--disc_width", type=int, default=16)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--train_variants", default=",".join(TRAIN_VARIANTS))
  parser.add_argument("--eval_variants", default=",".join(EVAL_VARIANTS))
  args = parser.parse_args()
  train = {k: TrainBench(args, *TRAIN_VARIANTS[k])
           for k in args.train_variants.split(",") if k}
  evals = {k: EvalBench(args, *EVAL_VARIANTS[k]) for k in args.eval_variants.split(",") if k}
  train_cpu, eval_cpu = {}, {}
  train_times = (time_alternating(train, "run", args.warmup, args.repeats, train_cpu)
                 if train else {})
  eval_times = (time_alternating(evals, "run", args.warmup, args.repeats, eval_cpu)
                if evals else {})
  print(f"\nwidths {args.recon_width}/{args.disc_width}, batch {args.batch}, one CPU device; "
        f"{os.cpu_count()} cores; median of {args.repeats} after {args.warmup} warm-up; "
        f"load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
  if train:
    _table("train step (ratios to the first variant; /pixel: per pixel of the network's input)",
           train, train_times, train_cpu, next(iter(train)))
  if evals:
    _table("evaluation (predict: maps and scores; /pixel: per pixel of the whole image)",
           evals, eval_times, eval_cpu, next(iter(evals)))


if __name__ == "__main__":
  main()
