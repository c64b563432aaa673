"""An HTTP inference service for an exported model (Starlette + uvicorn, no JAX).

  python -m draem_jax.serve --model model.onnx [--host 127.0.0.1 --port 8000]

Endpoints:
  POST /predict        multipart form, one or several files in the field `file`; JSON with
                       each image's score, normalised score, decision, threshold, the model's
                       step and the time spent. `?overlay=1` (one image) returns the overlay
                       PNG instead, the numbers in X-Draem-* headers.
  GET  /health         {"status": "ok", images in flight, ...}
  GET  /metadata       model.json
  GET  /               a page to drop images on (no external scripts or network)

Every image is decoded and resized in a worker thread (`Detector.prepare`, the steps of
predict.py), then waits in one queue for the model. A single model thread takes what the
queue holds, waiting up to --batch_window_ms for more, up to --max_batch images per call
(micro-batching: a batch of 4 costs less than 4 calls). At most --max_in_flight images are
admitted at once; beyond that a request gets 503 with Retry-After and nothing is queued, so
the queue is bounded and a burst cannot exhaust memory. Bad input (not an image, truncated,
empty, over --max_pixels, no `file` field) gets one 4xx with a message; the server goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from PIL import Image

from draem_jax.errors import ConfigError, DataError

FIELD = "file"
DEFAULT_MAX_PIXELS = 40_000_000  # A 6300 x 6300 image; decoded RGB takes 120 MB.
DEFAULT_MAX_UPLOAD_MB = 64
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_BATCH_WINDOW_MS = 5.0
PAGE = Path(__file__).with_name("serve_page.html")


class RequestError(Exception):
  """A request the server refuses: HTTP status and the message the client gets."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = headers or {}


@dataclass
class Options:
  max_pixels: int = DEFAULT_MAX_PIXELS
  max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20
  max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
  batch_window_s: float = DEFAULT_BATCH_WINDOW_MS / 1000
  max_batch: int | None = None  # None: the model's batch.


class MicroBatcher:
  """One queue of prepared images in front of one model thread.

  `submit(x)` resolves to (map (S, S), score, info) once the batch that held `x` has run.
  The loop takes the first waiting image, then whatever arrives within `window_s` (or is
  already queued), up to `max_batch`, and runs them in one `infer` call on its own thread
  (ONNX Runtime releases the GIL: the event loop and the decoding threads keep going).
  """

  def __init__(self, infer, max_batch: int, window_s: float):
    self._infer = infer
    self.max_batch = max_batch
    self.window_s = window_s
    self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None
    self.calls = 0
    self.images = 0
    self.model_s = 0.0  # Seconds in `infer`, all calls together.

  async def start(self):
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self):
    if self._task is not None:
      self._task.cancel()
    self._executor.shutdown(wait=False, cancel_futures=True)

  async def submit(self, x: np.ndarray):
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((x, future, time.perf_counter()))
    return await future

  async def _collect(self) -> list:
    items = [await self._queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + self.window_s
    while len(items) < self.max_batch:
      left = deadline - loop.time()
      try:
        if left <= 0:
          items.append(self._queue.get_nowait())
        else:
          items.append(await asyncio.wait_for(self._queue.get(), left))
      except (asyncio.QueueEmpty, asyncio.TimeoutError):
        break
    return items

  async def _loop(self):
    loop = asyncio.get_running_loop()
    while True:
      items = await self._collect()
      items = [item for item in items if not item[1].cancelled()]  # Clients that left.
      if not items:
        continue
      start = time.perf_counter()
      try:
        maps, scores = await loop.run_in_executor(
            self._executor, self._infer, np.stack([x for x, _, _ in items]))
      except Exception as e:  # pylint: disable=broad-except  # Reported to each request.
        for _, future, _ in items:
          if not future.done():
            future.set_exception(e)
        continue
      end = time.perf_counter()
      self.calls += 1
      self.images += len(items)
      self.model_s += end - start
      for i, (_, future, queued) in enumerate(items):
        if not future.done():
          future.set_result((maps[i], float(scores[i]),
                             {"queue_ms": 1000 * (start - queued),
                              "model_ms": 1000 * (end - start), "batch": len(items)}))


def check_image(data: bytes, name: str, max_pixels: int) -> None:
  """Refuses an upload before decoding it: empty, or more than `max_pixels` pixels.

  Raises:
    RequestError: 400 for an empty file, 413 for one over the limit.
  """
  if not data:
    raise RequestError(400, f"{name} is empty (0 bytes): upload an image file.")
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
  except Image.DecompressionBombError as e:
    raise RequestError(413, f"{name} is too large to decode ({e}).") from e
  except Exception:  # pylint: disable=broad-except  # decode_image names what is wrong.
    return
  if width * height > max_pixels:
    raise RequestError(413, f"{name} is {width}x{height} = {width * height} pixels, over this "
                       f"server's limit of {max_pixels} (--max_pixels); resize it first.")


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def create_app(detector, options: Options | None = None):
  """The Starlette application serving `detector` (a `draem_jax.Detector`)."""
  # pylint: disable=g-import-not-at-top
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.datastructures import UploadFile
  from starlette.requests import Request
  from starlette.responses import HTMLResponse, JSONResponse, Response
  from starlette.routing import Route
  # pylint: enable=g-import-not-at-top
  options = options or Options()
  max_batch = min(options.max_batch or detector.batch_size, detector.batch_size)
  batcher = MicroBatcher(detector.infer, max_batch, options.batch_window_s)
  state = {"in_flight": 0, "served": 0, "refused_busy": 0, "bad_requests": 0, "failures": 0}
  model_info = {"step": detector.step, "threshold": detector.threshold,
                "pixel_threshold": detector.pixel_threshold,
                "image_size": detector.image_size, "category": detector.metadata.get("category")}

  def error(e: RequestError) -> JSONResponse:
    if e.status != 503:
      state["bad_requests"] += 1
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

  async def read_uploads(request: Request) -> list[tuple[str, bytes]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
      raise RequestError(415, f"POST /predict takes a multipart form with the image in the "
                         f"field '{FIELD}', e.g. curl -F {FIELD}=@part.png "
                         "http://HOST:PORT/predict")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > options.max_upload_bytes:
      raise RequestError(413, f"the upload is {int(length)} bytes, over this server's limit "
                         f"of {options.max_upload_bytes}.")
    try:
      # One file more than the limit parses, so that the answer below can say so.
      form = await request.form(max_files=options.max_in_flight + 1)
    except Exception as e:  # pylint: disable=broad-except  # Malformed multipart bodies.
      raise RequestError(400, f"the form cannot be parsed: {getattr(e, 'detail', e)}") from e
    try:
      files = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
      if not files:
        given = sorted(set(form.keys())) or "none"
        raise RequestError(400, f"no image in the form field '{FIELD}' (fields given: "
                           f"{given}); send e.g. curl -F {FIELD}=@part.png")
      uploads = [(f.filename or f"{FIELD}[{i}]", await f.read()) for i, f in enumerate(files)]
    finally:
      await form.close()
    if sum(len(d) for _, d in uploads) > options.max_upload_bytes:
      raise RequestError(413, f"the upload is over this server's limit of "
                         f"{options.max_upload_bytes} bytes.")
    return uploads

  def prepare(name: str, data: bytes):
    check_image(data, name, options.max_pixels)
    try:
      return detector.prepare(data, name)
    except DataError as e:
      raise RequestError(400, str(e)) from e

  async def predict(request: Request) -> Response:
    start = time.perf_counter()
    try:
      uploads = await read_uploads(request)
      overlay = request.query_params.get("overlay", "0") not in ("0", "", "false")
      if overlay and len(uploads) > 1:
        raise RequestError(400, "overlay=1 returns one PNG: send one image per request.")
      if len(uploads) > options.max_in_flight:
        raise RequestError(413, f"{len(uploads)} images in one request, more than this server "
                           f"takes at once ({options.max_in_flight}, --max_in_flight): send "
                           "fewer per request.")
      if state["in_flight"] + len(uploads) > options.max_in_flight:
        state["refused_busy"] += 1
        # The time the model needs for what is in flight, at its mean time per call so far.
        per_call = batcher.model_s / batcher.calls if batcher.calls else 1.0
        retry = max(1, math.ceil(state["in_flight"] / max_batch * per_call))
        raise RequestError(503, f"busy: {state['in_flight']} images in flight, limit "
                           f"{options.max_in_flight} (--max_in_flight); retry later.",
                           {"Retry-After": str(retry)})
    except RequestError as e:
      return error(e)
    state["in_flight"] += len(uploads)
    try:
      results = []
      for name, data in uploads:  # Decode all before any compute: one bad file fails early.
        t0 = time.perf_counter()
        rgb, x = await run_in_threadpool(prepare, name, data)
        results.append((name, rgb, x, 1000 * (time.perf_counter() - t0)))
      answers = await asyncio.gather(*(batcher.submit(x) for _, _, x, _ in results))
      records = []
      if overlay:  # The map at the image's size is needed for the picture only.
        (name, rgb, _, _), (amap, score, _) = results[0], answers[0]
        prediction = await run_in_threadpool(detector.result, rgb, amap, score, name)
        png = await run_in_threadpool(_png, prediction.overlay())
    except RequestError as e:
      return error(e)
    except Exception as e:  # pylint: disable=broad-except  # The server keeps serving.
      state["failures"] += 1
      print(f"error: POST /predict failed: {type(e).__name__}: {e}", file=sys.stderr,
            flush=True)
      return JSONResponse({"error": f"the model failed on this request ({type(e).__name__}: "
                                    f"{e})."}, status_code=500)
    finally:
      state["in_flight"] -= len(uploads)
    state["served"] += len(uploads)
    total_ms = 1000 * (time.perf_counter() - start)
    if overlay:
      headers = {"X-Draem-Score": f"{prediction.score:.6f}",
                 "X-Draem-Decision": "anomalous" if prediction.is_anomalous else "normal",
                 "X-Draem-Threshold": f"{prediction.threshold:.6f}",
                 "X-Draem-Step": str(detector.step),
                 "X-Draem-Total-Ms": f"{total_ms:.1f}"}
      if prediction.normalized_score is not None:
        headers["X-Draem-Normalized-Score"] = f"{prediction.normalized_score:.6f}"
      return Response(png, media_type="image/png", headers=headers)
    records = []
    for (name, rgb, _, decode_ms), (_, score, info) in zip(results, answers):
      anomalous = bool(score >= detector.threshold)
      timing = {"decode_ms": decode_ms, **info}
      records.append({"file": name, "score": score,
                      "normalized_score": detector.normalized(score),
                      "decision": "anomalous" if anomalous else "normal",
                      "anomalous": anomalous, "threshold": detector.threshold,
                      "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                      "timing_ms": {k: round(v, 2) if isinstance(v, float) else v
                                    for k, v in timing.items()}})
    return JSONResponse({"model": model_info, "results": records,
                         "total_ms": round(total_ms, 2)})

  async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok", "in_flight": state["in_flight"],
                         "max_in_flight": options.max_in_flight, "max_batch": max_batch,
                         "batch_window_ms": 1000 * options.batch_window_s,
                         "images_served": state["served"],
                         "refused_busy": state["refused_busy"],
                         "bad_requests": state["bad_requests"],
                         "failures": state["failures"],
                         "model_calls": batcher.calls, "model_step": detector.step})

  async def metadata(_: Request) -> Response:
    return JSONResponse(detector.metadata)

  page = PAGE.read_text()

  async def index(_: Request) -> Response:
    return HTMLResponse(page)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    await batcher.start()
    try:
      yield
    finally:
      await batcher.stop()

  return Starlette(
      routes=[Route("/", index), Route("/health", health), Route("/metadata", metadata),
              Route("/predict", predict, methods=["POST"])],
      lifespan=lifespan)


def _session_options(threads: int | None):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  # Spinning model threads would take the cores the decoding threads need between calls.
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  return options


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m draem_jax.serve",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="model.onnx written by export.py "
                      "(model.json beside it)")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--threshold", type=float, default=None,
                      help="raw image threshold (default: model.json's)")
  parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="largest image accepted, width x height")
  parser.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                      help="largest request body")
  parser.add_argument("--max_in_flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                      help="images admitted at once; beyond, 503 with Retry-After")
  parser.add_argument("--batch_window_ms", type=float, default=DEFAULT_BATCH_WINDOW_MS,
                      help="how long the model waits for more images to batch")
  parser.add_argument("--max_batch", type=int, default=None,
                      help="images per model call (default and most: the model's batch, 8 "
                      "for a dynamic one; 1 turns micro-batching off)")
  parser.add_argument("--threads", type=int, default=None,
                      help="ONNX Runtime threads (default: one per core)")
  args = parser.parse_args(argv)
  for name in ("max_pixels", "max_in_flight", "port"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be positive.")
  if args.batch_window_ms < 0 or (args.max_batch is not None and args.max_batch < 1):
    parser.error("--batch_window_ms must be >= 0 and --max_batch >= 1.")
  try:
    import uvicorn  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("error: the server needs requirements-deploy.txt (starlette, uvicorn, "
          "python-multipart): pip install -r requirements-deploy.txt", file=sys.stderr)
    return 2
  from draem_jax.detector import Detector  # pylint: disable=g-import-not-at-top
  try:
    detector = Detector.from_onnx(args.model, args.threshold,
                                  batch_size=args.max_batch or 8,
                                  session_options=_session_options(args.threads))
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  app = create_app(detector, Options(
      max_pixels=args.max_pixels, max_upload_bytes=int(args.max_upload_mb * 2**20),
      max_in_flight=args.max_in_flight, batch_window_s=args.batch_window_ms / 1000,
      max_batch=args.max_batch))
  print(f"serving {args.model} (step {detector.step}, threshold {detector.threshold:.4f}) on "
        f"http://{args.host}:{args.port}/", flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
  return 0


if __name__ == "__main__":
  sys.exit(main())
