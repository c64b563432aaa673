"""A PNG grid of simulated anomalies on real MVTec AD images with DTD textures.

Each cell shows one sample as three tiles: the clean target, the mask, the augmented input,
with the sample's texture augmenters and blend factor written underneath. Images and textures
are read with PIL, converted to RGB and resized to --size (bilinear), then simulated on the
device by draem_jax.simulation.simulator with the paper's settings, except that --anomaly_prob (default
1) lets every sample show an anomaly.

  python bench/simulator_grid.py --out bench/out/simulator_grid.png
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from configs import mvtec
from draem_jax.simulation import augment
from draem_jax.simulation import simulator

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _load(paths, size):
  return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size),
                                                                  Image.BILINEAR))
                   for p in paths])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", default=str(_SHARED / "mvtec_ad" / "bottle" / "train" / "good"),
                      help="Folder of clean training images (*.png).")
  parser.add_argument("--textures", default=str(_SHARED / "dtd" / "images"),
                      help="DTD images/ folder (<class>/*.jpg).")
  parser.add_argument("--num", type=int, default=16, help="Number of samples.")
  parser.add_argument("--size", type=int, default=256, help="Image side.")
  parser.add_argument("--columns", type=int, default=4, help="Samples per row of the grid.")
  parser.add_argument("--anomaly_prob", type=float, default=1.0,
                      help="Probability of the anomaly branch (the paper trains with 0.5).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="bench/out/simulator_grid.png")
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  image_paths = sorted(Path(args.images).glob("*.png"))
  texture_paths = sorted(Path(args.textures).glob("*/*.jpg"))
  if not image_paths or not texture_paths:
    raise SystemExit(f"no images under {args.images} or no textures under {args.textures}")
  images = _load(rng.choice(image_paths, args.num, replace=False), args.size)
  textures = _load(rng.choice(texture_paths, args.num, replace=False), args.size)

  cfg = dataclasses.replace(simulator.SimulatorConfig.from_config(mvtec.get_config().simulator),
                            anomaly_prob=args.anomaly_prob)
  sim, details = jax.jit(lambda k, i, t: simulator.simulate_with_details(k, i, t, cfg))(
      jax.random.key(args.seed), images, textures)
  sim, details = jax.tree.map(np.asarray, (sim, details))

  size, label, gap = args.size, 28, 8
  rows = -(-args.num // args.columns)
  cell_w, cell_h = 3 * size + gap, size + label + gap
  grid = Image.new("RGB", (args.columns * cell_w, rows * cell_h), "white")
  draw = ImageDraw.Draw(grid)
  for n in range(args.num):
    x, y = (n % args.columns) * cell_w, (n // args.columns) * cell_h
    tiles = (sim.target[n], np.repeat(sim.mask[n], 3, axis=-1), sim.augmented[n])
    for t, tile in enumerate(tiles):
      grid.paste(Image.fromarray(np.round(tile * 255).astype(np.uint8)), (x + t * size, y))
    if details.anomaly_branch[n]:
      names = ", ".join(augment.AUGMENTER_NAMES[i] for i in details.augmenters[n])
      text = f"{names}; beta {details.beta[n]:.2f}; coverage {sim.mask[n].mean():.1%}"
    else:
      text = "clean branch"
    draw.text((x + 4, y + size + 6), text, fill="black")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  grid.save(out)
  print(f"wrote {out} ({grid.width}x{grid.height}); has_anomaly {sim.has_anomaly.tolist()}")


if __name__ == "__main__":
  main()
