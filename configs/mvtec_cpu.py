"""DRAEM on MVTec AD sized for a small CPU (2 cores): trains in minutes, not days.

Same method as configs/mvtec.py (losses, simulator, optimiser schedule, evaluation), with a
smaller image size, narrower networks and fewer steps. Its numbers are NOT the paper's: use it
to try the tool, for smoke tests, and on machines without an accelerator.

  python train.py --config configs/mvtec_cpu.py --workdir workdirs/bottle_cpu
"""

import ml_collections

# Config files are loaded by path; train.py sits at the repository root, so `configs` imports.
from configs import mvtec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's configuration scaled down for a CPU; `arg` is the category (default bottle)."""
  config = mvtec.get_config(arg)
  config.data.image_size = 128  # 128 x 128 instead of 256 x 256: 4x fewer pixels.
  config.model.recon_width = 32  # 1/4 of the paper's widths: ~16x fewer FLOPs per pixel.
  config.model.disc_width = 16
  config.train.num_steps = 1000  # ~38 epochs of bottle's 209 images at batch 8.
  config.train.log_every_steps = 25
  config.checkpoint.every_steps = 250
  return config
