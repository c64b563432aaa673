"""DRAEM on a folder of your own images, sized for a small CPU (2 cores): minutes, not days.

configs/folder.py (10% of train/good held out for the thresholds) at the sizes of
configs/mvtec_cpu.py (64x64, antialiased shrinking) and its 7,200 steps: the normal-only
workflow end to end.

  python train.py --config configs/folder_cpu.py:/data/my_parts --workdir workdirs/my_parts_cpu
"""

import ml_collections

# Config files are loaded by path; train.py sits at the repository root, so `configs` imports.
from configs import folder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/folder.py scaled down for a CPU; `arg` is the folder (data.root)."""
  config = folder.get_config(arg)
  config.data.image_size = 64  # 64 x 64 instead of 256 x 256.
  # Shrunk with antialiasing, as configs/mvtec_cpu.py: parts photographed at 0.5-5 MP shrink
  # 11-35x to 64 px, where the reference's bilinear resize skips most pixels.
  config.data.resize_antialias = True
  config.model.recon_width = 32  # 1/4 of the paper's widths.
  config.model.disc_width = 16
  # The paper's 21x21 score filter is a third of a 64x64 map, where it averages a small
  # defect away: scaled to the same 21/256 of the side, k = 5 (bench/RESULTS.md, "The image
  # score's filter at 64x64").
  config.eval.mean_filter_fraction = 21 / 256
  # The length of configs/mvtec_cpu.py (~30 minutes on 2 cores): at 3,600 steps or fewer the
  # 64x64 networks are far from converged on small defects (bench/RESULTS.md, "7,200 steps at
  # 64x64"); --config.train.num_steps=300 tries the workflow in a few minutes.
  config.train.num_steps = 7200
  config.train.log_every_steps = 25
  config.checkpoint.every_steps = 600
  return config
