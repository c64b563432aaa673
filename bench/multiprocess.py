"""Throughput of the tiny config with 1, 2 and 4 local JAX processes, side by side.

Each row is a real `train.py` run (1 CPU device per process, CPU collectives over gloo) on the
bottle training images at the same global batch; next to it, 1 process with as many devices,
where the gradient all-reduce stays inside one process. The difference per step is what the
cross-process collectives (and the per-step preemption agreement) add.

  python bench/multiprocess.py [--steps 40] [--batch 8] [--layouts 1x1,2x1,1x2,4x1,1x4]

Prints a Markdown table; the median step time is taken over logging windows after the first
(which holds the compilation).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(root: Path, workdir: Path, processes: int, devices: int, steps: int, batch: int):
  flags = ["--config.data.source=folder", f"--config.data.root={root}",
           f"--config.data.texture_root={DATA / 'dtd' / 'images'}", "--config.data.category=b",
           "--config.data.image_size=32", "--config.model.recon_width=4",
           "--config.model.disc_width=4", f"--config.train.batch_size={batch}",
           f"--config.train.num_steps={steps}", "--config.train.log_every_steps=5",
           f"--config.checkpoint.every_steps={steps}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for p in range(processes):
    extra = [] if processes == 1 else [
        "--config.train.distributed=True", f"--config.train.coordinator_address={address}",
        f"--config.train.num_processes={processes}", f"--config.train.process_id={p}"]
    procs.append(subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/mvtec.py"),
         f"--workdir={workdir}", *flags, *extra], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True))
  start = time.time()
  for proc in procs:
    err = proc.communicate()[1]
    if proc.returncode:
      raise RuntimeError(err[-3000:])
  wall = time.time() - start
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  step_s = np.median([1 / r["steps_per_second"] for r in records[1:]])
  return step_s, wall


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--layouts", default="1x1,2x1,1x2,4x1,1x4",
                      help="processes x devices per process, comma-separated, in run order")
  args = parser.parse_args()
  layouts = [tuple(int(x) for x in c.split("x")) for c in args.layouts.split(",")]
  print("| processes x devices | step (ms) | images/s | vs first row | run wall (s) |")
  print("|---|---|---|---|---|", flush=True)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "b"
    (root / "train").mkdir(parents=True)
    # The real images, linked (never copied); no test split, so no evaluation runs.
    (root / "train" / "good").symlink_to(DATA / "mvtec_ad" / "bottle" / "train" / "good")
    for processes, devices in layouts:
      step_s, wall = _run(root, Path(tmp) / f"w{processes}x{devices}", processes, devices,
                          args.steps, args.batch)
      rows[processes, devices] = step_s
      base = rows[layouts[0]]
      print(f"| {processes} x {devices} | {step_s * 1e3:.1f} | {args.batch / step_s:.0f} | "
            f"{base / step_s:.2f}x | {wall:.0f} |", flush=True)
  for n in (2, 4):
    if (n, 1) in rows and (1, n) in rows:
      added = (rows[n, 1] - rows[1, n]) * 1e3
      print(f"cross-process collectives at {n} processes: {added:+.1f} ms per step "
            f"({n} x 1 vs 1 x {n})")

if __name__ == "__main__":
  main()
