"""DRAEM on MVTec AD sized for a small CPU, trained on crops of 256x256 images (experimental).

Same method as configs/mvtec.py (losses, simulator, optimiser schedule), with narrower networks
and fewer steps, and trained on 64x64 crops of images kept at 256x256: a step costs what a
step on whole 64x64 images costs (configs/mvtec_cpu.py), but the defects are seen at 256x256,
where small ones survive. The whole 256x256 image is scored in overlapping 64x64 tiles (the
network never saw more context than a crop), and the score filter scales with the image
(21x21 at 256, as in the paper). Its numbers are NOT the paper's: use it to try the tool, for
smoke tests, and on machines without an accelerator.

  python train.py --config configs/mvtec_cpu_crops.py:pill --workdir workdirs/pill_cpu_crops

Measured at 1,800 steps on a 2-core CPU it scores BELOW configs/mvtec_cpu.py on bottle and pill
(bench/RESULTS.md, "Crops of 256x256 images vs whole 64x64 images"): at this width and length
the crop-trained networks do not yet turn the extra resolution into better scores. Kept for
experiments with crops and tiles; configs/mvtec_cpu.py stays the CPU recipe.
"""

import ml_collections

# Config files are loaded by path; train.py sits at the repository root, so `configs` imports.
from configs import mvtec


def cpu_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU sizes, shared with configs/folder_cpu.py: images, crops, widths, evaluation."""
  config.data.image_size = 256  # As the paper: small defects stay visible.
  config.data.resize_antialias = True  # Average every pixel when shrinking (900 px -> 256).
  config.data.crop_size = 64  # Train on 64x64 crops: the cost per step of 64x64 images.
  config.model.recon_width = 32  # 1/4 of the paper's widths: ~16x fewer FLOPs per pixel.
  config.model.disc_width = 16
  # Crop-trained models score whole images worse than tiles at the crop size (the networks
  # never saw a larger context); tiles of 64 overlapping by a quarter.
  config.eval.tile_size = 64
  config.eval.tile_overlap = 0.25
  config.eval.mean_filter_fraction = 21 / 256  # The paper's 21x21 at 256.
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's configuration scaled down for a CPU; `arg` is the category (default bottle)."""
  config = cpu_sizes(mvtec.get_config(arg))
  config.train.num_steps = 1800  # ~69 epochs of bottle's 209 images at batch 8.
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 300  # A learning curve on the test split.
  config.checkpoint.every_steps = 300
  return config
