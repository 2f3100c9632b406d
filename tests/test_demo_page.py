"""The demo page in a real browser: headless Chromium (Debian's, driven by Playwright; nothing is
downloaded) asks for the server's API key, uploads the demo clip and shows the base and adapted transcripts
side by side."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from server_process import start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parent.parent
# The flags a sandboxed CI machine needs (no GPU, no network beyond loopback, root).
KEY = "page-key"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def transcript(url: str, model: str) -> str:
    with open(ASSETS / "demo.flac", "rb") as f:
        return httpx.post(url + "/v1/audio/transcriptions", files={"file": ("demo.flac", f)}, data={"model": model},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=300).json()["text"].strip()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                             "scripts/setup.sh installs it when run as root)")
def test_demo_page_shows_base_and_adapted_transcripts_with_word_times(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    proc, url = start_server("--api-key", KEY)  # tiny.en with the bundled demo adapter, behind a key
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(url + "/")
            page.wait_for_selector("#key-box:not([hidden])")  # the server answered 401: the page asks for the key
            page.fill("#api-key", "not-the-key")
            page.click("#use-key")
            page.wait_for_function("document.querySelector('#status').textContent.includes('refused')")
            page.fill("#api-key", KEY)
            page.click("#use-key")
            page.wait_for_function("document.querySelectorAll('#adapter option').length > 0")
            assert page.locator("#adapter").input_value() == "demo"
            page.set_input_files("#file", str(ASSETS / "demo.flac"))
            page.click("#transcribe")
            page.wait_for_selector("body[data-done='1']", timeout=300_000)
            base_text = page.inner_text("#base-text")
            adapted_text = page.inner_text("#adapted-text")
            words = page.locator("#adapted-text .w")
            first_start = float(words.first.get_attribute("data-start"))
            last_end = float(words.last.get_attribute("data-end"))
            shot = tmp_path / "demo_page.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert " ".join(base_text.split()) == transcript(url, "tiny.en")
        assert " ".join(adapted_text.split()) == transcript(url, "demo")
        assert base_text != adapted_text
        assert 0 <= first_start < last_end <= 8.2
        assert shot.stat().st_size > 10_000
        if os.environ.get("DEMO_SCREENSHOT"):  # how docs/demo_page.png is made
            shutil.copyfile(shot, ROOT / os.environ["DEMO_SCREENSHOT"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
