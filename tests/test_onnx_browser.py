"""The ONNX export of the bundled demo adapter's model in a web page: transformers.js (npm's
@huggingface/transformers, installed by scripts/setup.sh into .cache/npm; served from here with
onnxruntime-web's wasm files, no CDN) transcribes the demo clip in headless Chromium, entirely in the page,
and gives this package's words."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from mlx_whisper_lora.assets_dir import ASSETS

try:  # the exports' registry moved the verification helpers from backend_mlx/ to export/
    from mlx_whisper_lora.export.verify import plain
except ImportError:  # pragma: no cover
    from mlx_whisper_lora.backend_mlx.export_verify import plain

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / ".cache" / "npm" / "node_modules"
TRANSFORMERS_JS = NODE_MODULES / "@huggingface" / "transformers" / "dist"
ORT_WEB = NODE_MODULES / "onnxruntime-web" / "dist"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def serve(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.skipif(not (TRANSFORMERS_JS / "transformers.min.js").exists() or not ORT_WEB.is_dir(),
                    reason="transformers.js is not installed (scripts/setup.sh: npm install --prefix .cache/npm "
                           "@huggingface/transformers)")
def test_transformers_js_transcribes_the_onnx_export_in_the_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("onnxruntime")
    from mlx_whisper_lora.data.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim
    from mlx_whisper_lora.export.onnx import write_onnx
    from mlx_whisper_lora.fuse import fuse
    from mlx_whisper_lora.text.metrics import score
    from mlx_whisper_lora.transcribe import load_for_inference, transcribe_many

    audio = np.asarray(load_audio(str(ASSETS / "demo.flac")), dtype=np.float32)
    ours = transcribe_many([audio], load_for_inference(None, str(ASSETS / "demo_adapter")), temperature=0.0,
                           language="en", progress=False)[0]["text"]
    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    hf = fuse(None, ASSETS / "demo_adapter", tmp_path / "hf", export_format="hf", dtype="float32")
    write_onnx(hf, site / "models" / "demo", quantize="int8")
    shutil.copyfile(Path(__file__).parent / "onnx_page.html", site / "index.html")
    (site / "audio.f32").write_bytes(audio.tobytes())
    mel = np.asarray(pad_or_trim(log_mel_spectrogram(audio), N_FRAMES, axis=0), dtype=np.float32).T  # (n_mels, frames)
    (site / "mel.f32").write_bytes(np.ascontiguousarray(mel).tobytes())
    (site / "transformers").symlink_to(TRANSFORMERS_JS)
    (site / "ort").symlink_to(ORT_WEB)
    server, url = serve(site)
    texts = {}
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 420})
            outside = []  # any request that leaves this server (a CDN) is a failure
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
            # the pipeline on the fp32 files last: its page is the screenshot
            for dtype, given in (("q8", "mel"), ("fp32", "mel"), ("fp32", "audio")):
                page.goto(f"{url}/index.html?dtype={dtype}&input={given}&seconds={len(audio) / 16000}")
                page.wait_for_selector("body[data-done]", state="attached", timeout=240_000)
                assert page.get_attribute("body", "data-done") == "1", page.inner_text("#error")
                texts[dtype, given] = page.inner_text("#text")
                print(dtype, given, page.inner_text("#status"), repr(texts[dtype, given]))  # seen with pytest -s
            shot = tmp_path / "onnx_browser.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    assert not outside, outside
    # on this package's log-mel, transformers.js's greedy decoding of the float export gives this package's words
    assert plain(texts["fp32", "mel"]) == plain(ours), (texts["fp32", "mel"], ours)
    # the pipeline pads the audio to 30 s before the log-mel (as transformers' does: other padding frames than
    # this package's), so it is held to transformers' own pipeline on the same weights, in Python
    transformers = pytest.importorskip("transformers")
    piped = transformers.pipeline("automatic-speech-recognition", model=str(hf))(audio.copy())["text"]
    assert plain(texts["fp32", "audio"]) == plain(piped), (texts["fp32", "audio"], piped)
    # int8 weights: within two words of the float transcript on this clip (its 22 words)
    assert score([plain(ours)], [plain(texts["q8", "mel"])])["wer"] <= 2 / len(plain(ours).split()), texts
    if os.environ.get("ONNX_BROWSER_SCREENSHOT"):  # how docs/onnx_browser.png is made
        shutil.copyfile(shot, ROOT / os.environ["ONNX_BROWSER_SCREENSHOT"])
