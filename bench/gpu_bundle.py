"""Builds `.gpu_bundle/`: everything `bench/gpu_suite.py` needs on a GPU host, in <= 60 MiB.

A GPU machine lent for a few minutes, with no network, needs the suite ready to run in one
command. The bundle holds

  <out>/                       the repository's tracked files (`git ls-files`), as committed
                               or edited in the working tree
  <out>/data/mvtec_ad/<cat>/   one MVTec AD category resized to --size (images: OpenCV-style
                               bilinear, `image_io.resize_bilinear`, as training resizes;
                               masks: nearest neighbour, kept 0/255), MVTec's layout, read
                               with the folder source (no tensorflow-datasets preparation)
  <out>/data/dtd/images/       the texture folder; images whose shorter side exceeds
                               --texture_side are resized (antialiased) and re-encoded as JPEG
  <out>/wheels/                manylinux x86_64 CPython 3.12 wheels of the packages the suite
                               imports that a stock JAX GPU image lacks (WHEELS)
  <out>/BUNDLE.json            commit, sizes, wheel list, how it was built

Run on the GPU host (Python 3.12, JAX with CUDA; docs/gpu.md):

  cd .gpu_bundle && python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl
  PYTHONPATH=/tmp/site python3 bench/gpu_suite.py --budget_s 540 --out /tmp/gpu_suite

Build here (needs the data beside the repository, and pip with network access for the wheels):

  python bench/gpu_bundle.py                      # -> .gpu_bundle/, prints its size
  python bench/gpu_bundle.py --wheels_from DIR    # wheels already downloaded into DIR

Exits with status 1 (and keeps the folder for inspection) when the bundle exceeds --max_mib.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from draem_jax import image_io  # pylint: disable=g-import-not-at-top,wrong-import-position

# Imported by the suite (the trainer's data pipeline and checkpoints) but absent from a stock
# JAX GPU image, which has jax, flax, optax, orbax-checkpoint, numpy, scipy, scikit-learn,
# pillow, matplotlib, absl-py, tqdm, etils, psutil, PyYAML: grain and its array_record and
# portpicker imports, ml_collections (configs). tensorflow-datasets, tensorboardX and jax2onnx
# are not needed (MVTec AD is read as a folder; TensorBoard files are optional).
WHEELS = ("grain", "array_record", "portpicker", "ml_collections")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
MARKER = "BUNDLE.json"
MiB = 2**20


def folder_size(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def copy_code(out: Path) -> int:
  """Copies the tracked files (working-tree contents); returns how many."""
  files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode().split("\0")
  count = 0
  for name in filter(None, files):
    src = REPO / name
    if src.is_file():  # A tracked file deleted in the working tree is left out.
      (out / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, out / name)
      count += 1
  return count


def _nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D mask (pixel centres mapped as OpenCV INTER_NEAREST)."""
  h, w = mask.shape
  rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
  cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
  return mask[rows[:, None], cols[None, :]]


def resize_category(src: Path, dst: Path, size: int, limit: int | None = None,
                    train_limit: int | None = None) -> int:
  """Writes MVTec category `src` resized to size x size under `dst`, same layout.

  Images: `image_io.resize_bilinear` (the training resize), saved as RGB PNG. Masks: nearest
  neighbour, saved as 0/255 grayscale PNG. `limit` keeps the first `limit` images of every
  test folder (and their masks), `train_limit` those of train/good: small copies for tests.

  Returns:
    The number of images written (masks not counted).
  """
  count = 0
  for folder in sorted([src / "train" / "good"] + sorted((src / "test").iterdir())):
    if not folder.is_dir():
      continue
    rel = folder.relative_to(src)
    images = sorted(p for p in folder.iterdir() if image_io.is_image_file(p))[
        :train_limit if rel.parts[0] == "train" else limit]
    (dst / rel).mkdir(parents=True, exist_ok=True)
    for path in images:
      resized = image_io.resize_bilinear(image_io.decode_image(path), size)
      Image.fromarray(resized).save(dst / rel / f"{path.stem}.png", compress_level=9)
      count += 1
      if rel.parts[0] == "test" and rel.name != "good":
        mask_path = src / "ground_truth" / rel.name / f"{path.stem}_mask.png"
        mask = _nearest(image_io.decode_mask(mask_path), (size, size)) * np.uint8(255)
        (dst / "ground_truth" / rel.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(dst / "ground_truth" / rel.name / mask_path.name,
                                   compress_level=9)
  return count


def copy_textures(src: Path, dst: Path, side: int, quality: int) -> tuple[int, int]:
  """Copies the texture tree; images whose shorter side exceeds `side` are resized so that it
  equals `side` (antialiased) and saved as JPEG of `quality`. Returns (copied, resized)."""
  copied = resized = 0
  for path in sorted(src.rglob("*")):
    if not (path.is_file() and image_io.is_image_file(path)):
      continue
    target = dst / path.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    h, w = image_io.image_size(path)
    if min(h, w) <= side:
      shutil.copy2(path, target)
      copied += 1
      continue
    scale = side / min(h, w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    array = image_io.resize_antialiased(image_io.decode_image(path), hw)
    Image.fromarray(array).save(target.with_suffix(".jpg"), quality=quality)
    resized += 1
  return copied, resized


def download_wheels(dst: Path, wheels_from: str | None) -> list[str]:
  """The WHEELS at this environment's versions (one version each), for CPython 3.12 x86_64."""
  dst.mkdir(parents=True, exist_ok=True)
  specs = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
  if wheels_from:
    for name in WHEELS:
      stem = name.replace("-", "_")
      found = sorted(Path(wheels_from).glob(f"{stem}-*.whl"))
      if not found:
        raise SystemExit(f"--wheels_from {wheels_from} has no {stem}-*.whl wheel.")
      shutil.copy2(found[-1], dst / found[-1].name)
  else:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               "-d", str(dst)]
    for platform in PLATFORMS:
      command += ["--platform", platform]
    subprocess.run(command + specs, check=True)
  return sorted(p.name for p in dst.glob("*.whl"))


def commit() -> str:
  result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True)
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
  return result.stdout.strip() + ("+dirty" if dirty else "") if result.returncode == 0 else ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(REPO / ".gpu_bundle"))
  parser.add_argument("--mvtec_root", default=str(REPO.parent / "shared/data/mvtec_ad"))
  parser.add_argument("--category", default="bottle")
  parser.add_argument("--texture_root", default=str(REPO.parent / "shared/data/dtd/images"))
  parser.add_argument("--size", type=int, default=256, help="Side of the resized category.")
  parser.add_argument("--texture_side", type=int, default=256,
                      help="Textures with a longer shorter side are resized to it.")
  parser.add_argument("--texture_quality", type=int, default=90, help="JPEG quality.")
  parser.add_argument("--wheels_from", default=None,
                      help="Copy the wheels from this folder instead of pip download.")
  parser.add_argument("--max_mib", type=float, default=60.0)
  args = parser.parse_args(argv)

  out = Path(args.out).resolve()
  if out.exists():
    if not (out / MARKER).is_file():
      raise SystemExit(f"{out} exists and is not a bundle (no {MARKER}); remove it or choose "
                       "another --out.")
    shutil.rmtree(out)
  out.mkdir(parents=True)
  category_src = Path(args.mvtec_root).expanduser() / args.category
  texture_src = Path(args.texture_root).expanduser()
  for path, flag in ((category_src, "--mvtec_root/--category"), (texture_src, "--texture_root")):
    if not path.is_dir():
      raise SystemExit(f"{path} ({flag}) does not exist.")

  files = copy_code(out)
  images = resize_category(category_src, out / "data/mvtec_ad" / args.category, args.size)
  copied, resized = copy_textures(texture_src, out / "data/dtd/images", args.texture_side,
                                  args.texture_quality)
  wheels = download_wheels(out / "wheels", args.wheels_from)
  parts = {name: folder_size(out / sub) for name, sub in (
      ("data_mvtec", "data/mvtec_ad"), ("data_textures", "data/dtd"), ("wheels", "wheels"))}
  parts["code"] = folder_size(out) - sum(parts.values())
  manifest = {"commit": commit(), "category": args.category, "size": args.size,
              "code_files": files, "category_images": images, "textures_copied": copied,
              "textures_resized": resized, "wheels": wheels,
              "bytes": parts, "max_mib": args.max_mib}
  (out / MARKER).write_text(json.dumps(manifest, indent=1) + "\n")
  total = folder_size(out)
  print(", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in parts.items()))
  print(f"{out}: {total / MiB:.1f} MiB ({total} bytes), {files} code files, {images} "
        f"{args.category} images, {copied + resized} textures ({resized} resized), wheels: "
        f"{', '.join(wheels)}")
  if total > args.max_mib * MiB:
    print(f"ERROR: the bundle is {total / MiB:.1f} MiB, over --max_mib {args.max_mib}: lower "
          "--texture_side or --texture_quality.", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
