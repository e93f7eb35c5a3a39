"""The dashboard in a real browser: Debian's Chromium driven by Playwright, on the embedded default model.

Opens the app, loads the default model, views a heatmap, runs a preview
quantization to the end and sees it in Compare; saves a screenshot of each page
under test-artifacts/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEPTQ_DEFAULT_MODEL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_load_heatmap_quantize_compare(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})

        def shot(name: str):
            time.sleep(1)
            assert page.locator("[data-testid=stException]").count() == 0, f"error element on {name}"
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        page.goto(server, timeout=60_000)
        page.wait_for_selector("text=Perplexity on", timeout=240_000)
        assert page.get_by_text("dequantized Q4_1").count() > 0
        shot("model")

        page.get_by_role("link", name="Importance").click()
        page.wait_for_selector("text=Top reserved weights", timeout=300_000)
        page.locator(".js-plotly-plot").nth(2).wait_for(timeout=60_000)  # plotly's bundle loads after the text
        assert page.locator(".js-plotly-plot").count() >= 3
        shot("importance")

        page.get_by_role("link", name="Quantize").click()
        page.get_by_role("button", name="Quantize").click()
        page.wait_for_selector("text=modules", timeout=120_000)
        page.wait_for_selector("text=Runs of this session", timeout=600_000)
        assert page.get_by_text("SEPTQ 3-bit r=0.01 finished").count() == 1
        shot("quantize")

        page.get_by_role("link", name="Compare").click()
        page.wait_for_selector("text=against bits per weight", timeout=300_000)  # tables are canvases: read the chart
        assert page.get_by_text("Generations").count() == 1
        shot("compare")
        browser.close()
