"""Load on the inference server over loopback: requests/s, latency, errors, 503s, peak RSS.

Starts `python -m draem_jax.serve` on 127.0.0.1 (once with micro-batching, once with
--max_batch 1), then for each client count keeps that many concurrent clients posting one
image each, back to back, for --duration seconds. Each client is an asyncio task with its own
connection (httpx), all in this one process. Reports per level: completed requests/s, p50 and
p99 latency of the answered ones, errors (anything but 200 and 503, transport errors and
client timeouts included), 503s (refused beyond --max_in_flight; the client then waits
Retry-After), the images per model call, and the server process's peak resident memory
(VmHWM, reset before each level where the kernel allows it).

  python bench/serve_load.py                       # the 8-bit CPU-sized model, 30 s per level
  python bench/serve_load.py --size 256 --recon_width 128 --disc_width 64 --max_in_flight 8
  python bench/serve_load.py --model model.int8.onnx --clients 1,4,16 --duration 30

Without --model it uses the 8-bit model of export.py --int8 at the CPU configuration's size
(configs/mvtec_cpu.py: 64x64, widths 32/16) with random weights, written under bench/out/ by
bench/deploy.py's code (needs JAX once; speed does not depend on the weights), and a
model.json beside it whose thresholds are placeholders. Bounded: at most 64 clients,
120 s per level, and a 30 s timeout per request (a longer wait counts as an error: give a
slow model a --max_in_flight it can answer in time, and the rest get 503 at once).
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# A 900x900 MVTec AD bottle image: what a camera of an inspection line might post.
IMAGE = (REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
         / "broken_large" / "000.png")
MAX_CLIENTS = 64
MAX_DURATION_S = 120
REQUEST_TIMEOUT_S = 30


def default_model(size: int, recon_width: int, disc_width: int) -> Path:
  """bench/out/draem_<size>_<widths>.int8.onnx and its model.json (written if missing)."""
  sys.path.insert(0, str(REPO / "bench"))
  import deploy  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(size=size, recon_width=recon_width, disc_width=disc_width,
                            mean_filter_size=21, reuse=True)
  _, int8_path, _ = deploy.write_onnx_files(["ort_int8"], args)
  meta = int8_path.with_suffix(".json")
  if not meta.is_file():
    meta.write_text(json.dumps({
        "format": "draem-jax onnx export", "category": "random weights (speed only)",
        "checkpoint_step": 0, "image_size": size,
        "input": {"name": "image", "shape": [None, size, size, 3], "dtype": "float32"},
        "image_threshold": 0.5, "pixel_threshold": 0.5,
        "threshold_source": "placeholder: random weights"}, indent=1))
  return int8_path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _peak_rss_mib(pid: int) -> float:
  for line in Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def _reset_peak_rss(pid: int) -> bool:
  """Resets VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
  try:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return True
  except OSError:
    return False


def start_server(model: Path, extra: list[str], max_in_flight: int):
  import httpx  # pylint: disable=g-import-not-at-top
  port = _free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "draem_jax.serve", "--model", str(model), "--port", str(port),
       "--max_in_flight", str(max_in_flight), *extra], cwd=REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
    try:
      if httpx.get(f"{url}/health", timeout=2).status_code == 200:
        return process, url
    except httpx.TransportError:
      pass
    time.sleep(0.2)
  process.kill()
  raise RuntimeError("the server did not answer /health within 120 s")


async def _client(client, url: str, body: bytes, deadline: float, out: dict):
  import httpx  # pylint: disable=g-import-not-at-top
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    try:
      response = await client.post(f"{url}/predict",
                                   files=[("file", ("part.png", body, "image/png"))])
      status = response.status_code
    except httpx.HTTPError:
      status = "transport"
    took = time.perf_counter() - start
    if status == 200:
      out["latencies"].append(took)
    elif status == 503:
      out["busy"] += 1
      # A well-behaved client waits as told (Retry-After), within the level's time.
      wait = float(response.headers.get("Retry-After", 1))
      await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
    else:
      out["errors"] += 1


async def run_level(url: str, clients: int, duration: float, body: bytes) -> dict:
  import httpx  # pylint: disable=g-import-not-at-top
  out = {"latencies": [], "busy": 0, "errors": 0}
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
    # One warm-up request: the first model call allocates ONNX Runtime's buffers.
    await client.post(f"{url}/predict", files=[("file", ("part.png", body, "image/png"))])
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(_client(client, url, body, deadline, out) for _ in range(clients)))
    wall = time.perf_counter() - start
  lat = sorted(out["latencies"])
  q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] if lat else float("nan")
  return {"clients": clients, "seconds": wall, "ok": len(lat), "req_per_s": len(lat) / wall,
          "p50_ms": 1000 * q(0.50), "p99_ms": 1000 * q(0.99),
          "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
          "errors": out["errors"], "busy_503": out["busy"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=None, help="an exported .onnx (default: see above)")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--recon_width", type=int, default=32)
  parser.add_argument("--disc_width", type=int, default=16)
  parser.add_argument("--clients", default="1,4,16")
  parser.add_argument("--duration", type=float, default=30.0)
  parser.add_argument("--max_in_flight", type=int, default=32)
  parser.add_argument("--image", default=str(IMAGE), help="the uploaded image")
  parser.add_argument("--modes", default="batching,no_batching")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  args = parser.parse_args()
  import httpx  # pylint: disable=g-import-not-at-top
  levels = [int(c) for c in args.clients.split(",")]
  if max(levels) > MAX_CLIENTS or args.duration > MAX_DURATION_S:
    parser.error(f"at most {MAX_CLIENTS} clients and {MAX_DURATION_S} s per level.")
  model = Path(args.model) if args.model else default_model(args.size, args.recon_width,
                                                             args.disc_width)
  body = Path(args.image).read_bytes()
  modes = {"batching": [], "no_batching": ["--max_batch", "1"]}
  print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model {model} "
        f"({model.stat().st_size / 2**20:.1f} MiB); image {args.image} ({len(body)} bytes)")
  rows = []
  for mode in args.modes.split(","):
    process, url = start_server(model, modes[mode], args.max_in_flight)
    try:
      for clients in levels:
        reset = _reset_peak_rss(process.pid)
        load = os.getloadavg()[0]
        before = httpx.get(f"{url}/health", timeout=10).json()
        row = asyncio.run(run_level(url, clients, args.duration, body))
        after = httpx.get(f"{url}/health", timeout=10).json()
        calls = after["model_calls"] - before["model_calls"]
        row.update(mode=mode, peak_rss_mib=_peak_rss_mib(process.pid), rss_reset=reset,
                   load_before=load, images_per_model_call=(
                       (after["images_served"] - before["images_served"]) / calls
                       if calls else float("nan")))
        rows.append(row)
        print(json.dumps(row), flush=True)
    finally:
      process.terminate()
      process.wait(timeout=30)
  print("\n| mode | clients | req/s | p50 ms | p99 ms | errors | 503s | images/model call "
        "| peak RSS MiB |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['mode']} | {r['clients']} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | "
          f"{r['p99_ms']:.0f} | {r['errors']} | {r['busy_503']} | "
          f"{r['images_per_model_call']:.2f} | {r['peak_rss_mib']:.0f} |")
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
