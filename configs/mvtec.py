"""DRAEM on MVTec AD with the paper's settings.

Usage:
  python train.py --config configs/mvtec.py            # bottle
  python train.py --config configs/mvtec.py:screw      # another category
  python train.py --config configs/mvtec.py:all        # the 15 categories, one after another
  python train.py --config configs/mvtec.py --config.train.batch_size=16

Paths: `data.root` is the folder that holds the extracted MVTec AD categories
(`<root>/bottle/train/good/...`); `data.texture_root` the DTD `images/` folder (or any folder
of texture images). Both default to the environment variables DRAEM_MVTEC_ROOT and
DRAEM_TEXTURE_ROOT so that one config serves every machine.
"""

import os

import ml_collections

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the paper's configuration; `arg` is the category (default bottle) or `all`."""
  category = arg or "bottle"
  config = ml_collections.ConfigDict()

  # --- data -------------------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.source = "mvtec"  # "mvtec" (TFDS-prepared MVTec AD) or "folder" (your own images).
  data.root = os.environ.get("DRAEM_MVTEC_ROOT", "~/data/mvtec_ad")  # Extracted MVTec AD.
  data.category = category  # One of MVTEC_CATEGORIES, or "all" (each in its own sub-workdir).
  data.tfds_data_dir = ""  # Where TFDS keeps the prepared ArrayRecord ("" = TFDS default).
  data.texture_root = os.environ.get("DRAEM_TEXTURE_ROOT", "~/data/dtd/images")  # Textures.
  data.max_textures = 0  # 0 = every texture; N = a fixed seeded subset of N (paper's Fig. 9).
  # Side, or (height, width), the images are resized to (each a multiple of 32 for the model).
  # FieldReference(object): `--config.data.image_size='(256,512)'` may replace the int.
  data.image_size = ml_collections.FieldReference(256, field_type=object)
  data.resize = "stretch"  # "stretch" (the paper), "fit_long_side" (pad), "fit_short_side" (crop).
  data.resize_antialias = False  # Antialiased (area) shrinking; False = the paper's bilinear.
  # Train on random crops of this side or (height, width) of the resized image (0 = whole image).
  data.crop_size = ml_collections.FieldReference(0, field_type=object)
  data.train_list = ""  # Folder source: text file of training image paths ("" = root/train/good).
  data.validation_fraction = 0.0  # Share of train/good held out to choose thresholds (0 = the
  # paper: train on all of it; evaluation then reports the test-set F1-max threshold only).
  data.validation_min_images = 4  # The validation split holds at least this many images.
  data.mask_pattern = "{stem}_mask.png"  # Folder source: mask file name ({stem} = image name).
  data.mask_root = ""  # Folder source: folder of <defect>/<mask> ("" = <root>/ground_truth).
  data.cache_decoded = True  # Decode+resize train/test images and textures once, keep in RAM:
  # N*S*S*3 bytes at side S: 41 MB for bottle's 209 images, 1.1 GB for DTD's 5,640 at S=256.
  data.num_workers = 2  # grain worker processes decoding images when cache_decoded is False.
  data.prefetch_buffer_size = 4  # Batches each worker prepares ahead.

  # --- anomaly simulator (DRAEM_SPEC section 4) --------------------------------------------
  config.simulator = sim = ml_collections.ConfigDict()
  sim.rotate_prob = 0.3  # Probability that the clean image (and target) is rotated.
  sim.rotate_max_deg = 90.0  # That rotation's angle ~ U(-90, 90) degrees.
  sim.anomaly_prob = 0.5  # Probability that a sample gets a synthetic anomaly.
  sim.perlin_min_log2 = 0  # Perlin lattice resolution 2^k with k ~ U{min..max} per axis.
  sim.perlin_max_log2 = 5
  sim.perlin_rotate_max_deg = 90.0  # The noise is rotated by U(-90, 90) degrees.
  sim.perlin_threshold = 0.5  # Mask = rotated noise > threshold.
  sim.beta_max = 0.8  # Blend factor beta ~ U[0, beta_max); texture opacity is 1 - beta.
  sim.num_augmenters = 3  # Distinct texture augmenters drawn per sample out of the ten.
  sim.texture_rotate_max_deg = 45.0  # The "rotate" augmenter's angle ~ U(-45, 45).
  sim.batching = "auto"  # "vmap", "map" (loop over samples) or "auto" (map on CPU, else vmap).
  # Photometric jitter of the clean image (input and target alike, before rotation and anomaly),
  # teaching that lighting drift is normal; not in the paper, so 0 (off) here.
  sim.jitter_brightness = 0.0  # Brightness factor ~ U(1 - r, 1 + r); 0 = off.
  sim.jitter_contrast = 0.0  # Contrast factor about the image mean ~ U(1 - r, 1 + r); 0 = off.
  sim.jitter_gamma = 0.0  # Gamma ~ U(1 - r, 1 + r); 0 = off.
  # The paper's ablations (its Table 3; docs/experiments.md); the defaults are the full method.
  sim.mask_shape = "perlin"  # "perlin" or "rectangles" (DRAEM_rect: 1-4 random rectangles).
  sim.texture_source = "textures"  # "textures" or "color" (DRAEM_color: one random colour).
  sim.augment_textures = True  # Texture augmenters on (False with random_opacity: DRAEM_no.aug).
  sim.random_opacity = True  # beta ~ U[0, beta_max); False = beta 0, opaque (DRAEM_img.aug).

  # --- model (DRAEM_SPEC section 1) ---------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.recon_width = 128  # Base width of the reconstructive sub-network.
  model.disc_width = 64  # Base width of the discriminative sub-network.
  model.dtype = "float32"  # Activation dtype: "float32" or "bfloat16" (params stay float32).
  # BatchNorm, max-pool and upsampling: "custom" (hand-written gradients, fast on XLA:CPU),
  # "plain" (Flax/jax.numpy, autodiff) or "auto" (custom on CPU, plain elsewhere). Same
  # parameters and numbers; may change between restarts of a run.
  model.layer_impl = "auto"
  # "draem", or the paper's ablations: "disc_only" (discriminative network alone, focal loss)
  # or "recon_ae" (reconstructive network alone, l2 + SSIM; map = 1 - SSIM(input, rec)).
  model.variant = "draem"
  model.sspcab = False  # SSPCAB (Ristea et al. 2022) as the reconstructive encoder's last block.
  model.sspcab_lambda = 0.1  # Weight of SSPCAB's own loss, MSE(block input, block output).

  # --- optimisation (DRAEM_SPEC section 3) --------------------------------------------------
  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 1e-4  # Adam learning rate.
  optim.decay_fractions = (0.8, 0.9)  # Fractions of the run at which lr is multiplied...
  optim.decay_factor = 0.2  # ...by this factor.
  optim.b1 = 0.9  # Adam beta1.
  optim.b2 = 0.999  # Adam beta2.
  optim.eps = 1e-8  # Adam epsilon.

  # --- training loop ------------------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 8  # Global batch size (split over all devices).
  train.num_epochs = 700  # Epoch = ceil(number of training images / batch_size) steps.
  train.num_steps = -1  # If > 0, overrides num_epochs.
  train.seed = 0  # Seeds parameters, data order and the simulator.
  train.log_every_steps = 50  # Metrics to metrics.jsonl and TensorBoard every N steps.
  train.eval_every_steps = 0  # Periodic evaluation on the test split (0 = only at the end).
  train.distributed = False  # JAX's multi-process runtime (docs/multi_process.md).
  train.coordinator_address = ""  # host:port of process 0; "" = $JAX_COORDINATOR_ADDRESS or auto.
  train.num_processes = 0  # Number of processes; 0 = $JAX_NUM_PROCESSES or auto-detected.
  train.process_id = -1  # This process's id; -1 = $JAX_PROCESS_ID or auto-detected.
  train.initialization_timeout = 300  # Seconds to wait for the coordinator and every process.

  # --- evaluation (DRAEM_SPEC section 5) ----------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 8  # Test images per forward pass (rounded up to a multiple of the devices).
  ev.mean_filter_size = 21  # Image score = max of the k x k mean-filtered anomaly map.
  ev.mean_filter_fraction = 0.0  # If > 0: k = odd size nearest fraction x the map's short side.
  # Score tiles of this side or (height, width) blended into one map (0 = the whole image).
  ev.tile_size = ml_collections.FieldReference(0, field_type=object)
  ev.tile_overlap = 0.25  # Fraction of a tile shared with its neighbour.
  # "paper": that max. "minus_median" (max minus the filtered map's median) or "p99" (99th
  # percentile of the map) are steadier under global lighting changes (docs/robustness.md).
  ev.image_score = "paper"
  ev.protocol = "paper"  # Ground-truth rule: "paper" (bilinear, == 1.0) or "standard" (>= 0.5).
  ev.aupro_fpr_limit = 0.3  # AU-PRO integrates PRO up to this false-positive rate.
  ev.aupro_full_resolution = False  # Also compute AU-PRO at the original image resolution.
  ev.write_overlays = True  # Overlay PNGs for every test image.
  ev.threshold_method = "f1"  # Validation split: "f1" (F1-max, synthetic) or "fpr" (target_fpr).
  ev.target_fpr = 0.01  # "fpr": share of good validation images (and pixels) called anomalous.
  ev.sensitivity = 0.5  # In (0, 1): 0.5 = as chosen; higher flags more (threshold lowered).

  # --- checkpoints --------------------------------------------------------------------------
  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 1000  # Save the train state and data iterator every N steps.
  ckpt.max_to_keep = 3  # Keep the last K checkpoints.

  return config
