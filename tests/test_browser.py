"""The dashboard in a real browser: Debian's Chromium driven by Playwright, on the embedded default model.

Opens the app, loads the default model, views a heatmap (and picks a block by
clicking its bar), the Mask page and a step of the Learn page, runs a preview
quantization to the end and sees it in Compare; saves a screenshot of each page
under test-artifacts/. A second test has two tabs quantize at once on a tiny model.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def streamlit_app(model_dir: Path | None):
    """Streamlit headless on 127.0.0.1 and a free port; the embedded default model unless `model_dir`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEPTQ_DEFAULT_MODEL"}
    if model_dir is not None:
        env["SEPTQ_DEFAULT_MODEL"] = str(model_dir)
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


@pytest.fixture(scope="module")
def server():
    with streamlit_app(None) as url:
        yield url


def no_error(page, name: str) -> None:
    assert page.locator("[data-testid=stException]").count() == 0, f"error element on {name}"


def test_load_heatmap_mask_learn_quantize_compare(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})

        def shot(name: str):
            time.sleep(1)
            no_error(page, name)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        page.goto(server, timeout=60_000)
        page.wait_for_selector("text=Perplexity on", timeout=240_000)
        assert page.get_by_text("dequantized Q4_1").count() > 0
        shot("model")

        page.get_by_role("link", name="Importance").click()
        page.wait_for_selector("text=Top reserved weights", timeout=300_000)
        page.locator(".js-plotly-plot").nth(2).wait_for(timeout=60_000)  # plotly's bundle loads after the text
        assert page.locator(".js-plotly-plot").count() >= 3
        page.wait_for_selector("text=SEPTQ importance of 0.self_attn.q_proj", timeout=60_000)
        # a click on the bar of block 2 in the per-block chart selects that block
        area = page.locator(".js-plotly-plot").first.locator("rect.nsewdrag").first.bounding_box()
        blocks = 30  # bars of equal width over the plot area; click near the bottom of bar 2
        page.mouse.click(area["x"] + area["width"] * 2.5 / blocks, area["y"] + area["height"] - 3)
        page.wait_for_selector("text=SEPTQ importance of 2.self_attn.q_proj", timeout=120_000)
        shot("importance")

        page.get_by_role("link", name="Mask").click()
        page.wait_for_selector("text=Share in the top 1% input channels", timeout=300_000)
        shot("mask")

        page.get_by_role("link", name="Learn").click()
        page.get_by_role("button", name="Step", exact=True).click()
        page.wait_for_selector("text=Column 0", timeout=60_000)
        shot("learn")

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


def test_two_tabs_quantize_at_once(tiny_model_dir):
    """Two browser sessions on one server (one shared model) run a quantization each, at the same time."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_app(tiny_model_dir("llama")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tabs = [browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
        for tab in tabs:
            tab.goto(f"{url}/quantize", timeout=60_000)
            tab.get_by_role("button", name="Quantize").wait_for(timeout=120_000)
        methods = ["septq", "gptq"]
        for tab, method in zip(tabs, methods):
            tab.locator("[data-testid=stSelectbox]").filter(has_text="Method").first.click()
            tab.get_by_role("option", name=method, exact=True).click()
        for tab in tabs:  # both submitted before either finishes
            tab.get_by_role("button", name="Quantize").click()
        for tab, label in zip(tabs, ["SEPTQ 3-bit r=0.01", "GPTQ 3-bit"]):
            tab.wait_for_selector(f"text={label} finished", timeout=300_000)
            tab.wait_for_selector("text=Runs of this session", timeout=60_000)
            no_error(tab, label)
            assert tab.get_by_text("failed").count() == 0
        for i, tab in enumerate(tabs):
            tab.screenshot(path=str(ARTIFACTS / f"two-tabs-{i}.png"))
        # each session keeps only its own run
        assert tabs[0].get_by_text("GPTQ 3-bit").count() == 0
        assert tabs[1].get_by_text("SEPTQ 3-bit").count() == 0
        browser.close()


def test_learn_plays_and_pauses(tiny_model_dir):
    """Play advances the sweep one column at a time on its own; Pause stops it."""
    from playwright.sync_api import sync_playwright

    with streamlit_app(tiny_model_dir("llama")) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/learn", timeout=60_000)
        page.get_by_role("button", name="Play").click()
        page.wait_for_selector("text=Column 2", timeout=60_000)  # two timer ticks later
        page.get_by_role("button", name="Pause").click()
        time.sleep(2)
        value = page.locator("[data-testid=stSliderThumbValue]").first
        shown = value.inner_text()
        time.sleep(3)
        assert value.inner_text() == shown  # paused: no more steps
        assert int(shown) >= 3
        no_error(page, "learn")
        browser.close()
