"""The inference server over real HTTP on 127.0.0.1: endpoints, bad input, limits, the page."""

import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import helpers
import draem_jax

BOTTLE = helpers.SHARED_DATA / "mvtec_ad" / "bottle" / "test"
CHROMIUM = Path("/usr/bin/chromium")
MAX_IN_FLIGHT = 4
MAX_PIXELS = 250_000  # The 900x900 bottle images are over it; the test images below are not.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _png_bytes(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


@pytest.fixture(scope="module")
def images():
  """Small crops of real bottle images (odd sizes, RGB and grayscale) as PNG bytes."""
  full = [np.asarray(Image.open(BOTTLE / d / "000.png"))
          for d in ("good", "broken_large", "contamination")]
  return {"good.png": _png_bytes(full[0][200:290, 250:347]),
          "broken.png": _png_bytes(full[1][150:480, 150:481]),
          "gray.png": _png_bytes(full[2][300:361, 100:177].mean(-1).astype(np.uint8)),
          "large.png": (BOTTLE / "good" / "001.png").read_bytes()}


@pytest.fixture(scope="module")
def server(exported_run, tmp_path_factory):
  """`python -m draem_jax.serve` in its own process; yields (base URL, model path)."""
  _, onnx_path = exported_run
  port = _free_port()
  log = tmp_path_factory.mktemp("server") / "server.log"
  with open(log, "w") as out:
    process = subprocess.Popen(
        [sys.executable, "-m", "draem_jax.serve", "--model", str(onnx_path), "--port",
         str(port), "--max_in_flight", str(MAX_IN_FLIGHT), "--max_pixels", str(MAX_PIXELS),
         "--batch_window_ms", "20"], cwd=helpers.REPO, stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 120
    while True:
      assert process.poll() is None, log.read_text()
      try:
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.monotonic() < deadline, log.read_text()
      time.sleep(0.2)
    yield url, onnx_path
  finally:
    process.terminate()
    process.wait(timeout=30)
  assert "Traceback" not in log.read_text(), log.read_text()


def _post(url, files, **params):
  return httpx.post(f"{url}/predict", files=files, params=params, timeout=60)


def _good_request(url, images):
  response = _post(url, [("file", ("good.png", images["good.png"], "image/png"))])
  assert response.status_code == 200, response.text
  return response.json()


def test_endpoints(server, images):
  url, onnx_path = server
  health = httpx.get(f"{url}/health", timeout=10).json()
  assert health["status"] == "ok" and health["max_in_flight"] == MAX_IN_FLIGHT
  assert health["max_batch"] == 4  # The model's fixed batch.
  meta = httpx.get(f"{url}/metadata", timeout=10).json()
  assert meta == json.loads(onnx_path.with_suffix(".json").read_text())
  page = httpx.get(url, timeout=10)
  assert page.status_code == 200 and "text/html" in page.headers["content-type"]
  assert 'id="drop"' in page.text and "http" not in page.text.replace("http-equiv", "")
  # Several images in one request: one micro-batch, the scores of the Python API.
  names = ["good.png", "broken.png", "gray.png"]
  response = _post(url, [("file", (n, images[n], "image/png")) for n in names])
  assert response.status_code == 200, response.text
  body = response.json()
  detector = draem_jax.Detector.from_onnx(onnx_path)
  want = detector.predict([images[n] for n in names])
  assert body["model"]["step"] == helpers.TRAINED_STEPS
  assert body["model"]["threshold"] == pytest.approx(meta["image_threshold"])
  assert [r["file"] for r in body["results"]] == names
  for got, w in zip(body["results"], want):
    assert got["score"] == pytest.approx(w.score, abs=1e-6)
    assert got["normalized_score"] == pytest.approx(w.normalized_score, abs=1e-6)
    assert got["decision"] == ("anomalous" if w.is_anomalous else "normal")
    assert got["threshold"] == pytest.approx(w.threshold)
    assert (got["height"], got["width"]) == w.image.shape[:2]
    assert got["timing_ms"]["batch"] == 3 and got["timing_ms"]["model_ms"] > 0
  assert body["total_ms"] > 0
  # ?overlay=1: the overlay PNG at the image's size, the numbers in headers.
  response = _post(url, [("file", ("broken.png", images["broken.png"], "image/png"))],
                   overlay=1)
  assert response.status_code == 200 and response.headers["content-type"] == "image/png"
  overlay = np.asarray(Image.open(io.BytesIO(response.content)))
  np.testing.assert_array_equal(overlay, want[1].overlay())
  assert float(response.headers["X-Draem-Score"]) == pytest.approx(want[1].score, abs=1e-5)
  assert response.headers["X-Draem-Decision"] in ("anomalous", "normal")
  assert response.headers["X-Draem-Step"] == str(helpers.TRAINED_STEPS)


def test_bad_input_gets_one_4xx_and_the_server_goes_on(server, images):
  url, _ = server
  truncated = images["good.png"][:len(images["good.png"]) // 2]
  cases = [
      ([("file", ("notes.png", b"this is not an image", "image/png"))], 400, "notes.png"),
      ([("file", ("cut.png", truncated, "image/png"))], 400, "cut.png"),
      ([("file", ("empty.png", b"", "image/png"))], 400, "empty"),
      ([("file", ("large.png", images["large.png"], "image/png"))], 413, "--max_pixels"),
      ([("image", ("good.png", images["good.png"], "image/png"))], 400, "field 'file'"),
      ([("file", ("good.png", images["good.png"], "image/png")),
        ("file", ("notes.png", b"GIF89a junk", "image/gif"))], 400, "notes.png"),
  ]
  for files, status, words in cases:
    response = _post(url, files)
    assert response.status_code == status, (words, response.text)
    assert words in response.json()["error"]
    _good_request(url, images)
  response = httpx.post(f"{url}/predict", content=images["good.png"],
                        headers={"content-type": "image/png"}, timeout=60)
  assert response.status_code == 415 and "multipart" in response.json()["error"]
  response = _post(url, [("file", (n, images[n], "image/png")) for n in ("good.png", "gray.png")],
                   overlay=1)
  assert response.status_code == 400 and "one image" in response.json()["error"]
  assert httpx.get(f"{url}/predict", timeout=10).status_code == 405
  assert _good_request(url, images)["results"][0]["decision"] in ("anomalous", "normal")
  assert httpx.get(f"{url}/health", timeout=10).json()["bad_requests"] >= len(cases) + 2


def test_beyond_the_limit_503_with_retry_after(server, images):
  url, _ = server
  # More images in one request than the server ever takes at once: 413, not "retry".
  files = [("file", (f"{i}.png", images["good.png"], "image/png"))
           for i in range(MAX_IN_FLIGHT + 1)]
  response = _post(url, files)
  assert response.status_code == 413 and "--max_in_flight" in response.text
  # A flood of concurrent requests of 2 images (each stays in flight for at least the 20 ms
  # batch window): at most 2 are admitted at a time; the others get 503 with Retry-After.
  one = [("file", ("broken.png", images["broken.png"], "image/png"))] * 2
  with ThreadPoolExecutor(12) as pool:
    responses = list(pool.map(lambda _: _post(url, one), range(36)))
  statuses = [r.status_code for r in responses]
  assert set(statuses) == {200, 503}, statuses
  for r in responses:
    if r.status_code == 503:
      assert int(r.headers["Retry-After"]) >= 1 and "--max_in_flight" in r.json()["error"]
  health = httpx.get(f"{url}/health", timeout=10).json()
  assert health["in_flight"] == 0 and health["refused_busy"] == statuses.count(503)
  assert health["failures"] == 0
  # Micro-batching: fewer model calls than images.
  assert health["model_calls"] < health["images_served"]
  _good_request(url, images)


def test_server_imports_no_jax(exported_run):
  _, onnx_path = exported_run
  code = ("import sys, draem_jax; from draem_jax import serve; "
          "from draem_jax.deployment.serve import create_app; "
          f"create_app(draem_jax.Detector.from_onnx(r'{onnx_path}')); "
          "print('JAXMODULES', sorted(m for m in sys.modules "
          "if m.split('.')[0] in ('jax', 'jaxlib', 'flax')))")
  assert "JAXMODULES []" in helpers.run_python(code)


def test_page_shows_a_result_in_headless_chromium(server, images, tmp_path):
  if not CHROMIUM.is_file():
    pytest.skip("no /usr/bin/chromium (Debian's chromium package; .ci/run installs it)")
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  url, _ = server
  upload = tmp_path / "broken.png"
  upload.write_bytes(images["broken.png"])
  with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-extensions", "--no-first-run"])
    try:
      page = browser.new_page(viewport={"width": 900, "height": 700})
      requests = []
      page.on("request", lambda r: requests.append(r.url))
      page.goto(url, wait_until="load")
      page.wait_for_function(
          "document.getElementById('model').textContent.includes('checkpoint step')")
      page.set_input_files("#files", str(upload))
      page.wait_for_selector(".card img", timeout=60_000)
      page.wait_for_selector(".card .score", timeout=60_000)
      text = page.inner_text("#results")
      assert "broken.png" in text and "score 0." in text
      assert "ANOMALOUS" in text or "NORMAL" in text
      assert page.eval_on_selector(".card img", "i => i.complete && i.naturalWidth") == 331
      shot = page.screenshot(path=str(tmp_path / "page.png"))
    finally:
      browser.close()
  picture = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.float64)
  assert picture.std() > 10  # Not a blank page.
  assert all(r.startswith(url) or r.startswith("blob:") for r in requests), requests
