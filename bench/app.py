"""Dashboard benchmark on the embedded default model, in a real browser and through AppTest.

Prints, from one run:
- cold start: a fresh Streamlit process to the Model page ready (card shown, then
  the quick FP perplexity), measured in Debian's Chromium;
- first visit of the Importance page (calibration pass + scoring all modules, cached after);
- seconds to redraw the Importance page after changing the module, per module:
  in the browser (click to heatmap shown / page settled) and the server's script
  run alone (AppTest), first visit and revisit (target < 1 s for the largest module);
- the largest websocket message the browser received, and the largest plotly
  figure of every page (AppTest, the same process as the model): target < 2 MB.

    .venv/bin/python -m bench.app [--no-browser]

Run it with nothing else running: timings on 2 shared cores are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .machine import RESULTS, header

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
LIMIT_BYTES = 2 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SEPTQ_DEFAULT_MODEL"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.25)
    proc.terminate()
    raise RuntimeError("streamlit did not become healthy within 60 s")


def browser(results: dict) -> None:
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    port = free_port()
    proc = start_server(port)
    frames: list[int] = []
    try:
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = chromium.new_page(viewport={"width": 1400, "height": 1200})
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(len(f))))
            results["server_healthy_s"] = time.perf_counter() - t0
            page.goto(f"http://127.0.0.1:{port}", timeout=60_000)
            page.wait_for_selector("text=dequantized Q4_1", timeout=300_000)
            results["cold_start_card_s"] = time.perf_counter() - t0
            page.wait_for_selector("text=Perplexity on", timeout=300_000)
            results["cold_start_ready_s"] = time.perf_counter() - t0
            print(f"cold start: server healthy {results['server_healthy_s']:.1f} s, model card "
                  f"{results['cold_start_card_s']:.1f} s, page ready (quick FP perplexity) "
                  f"{results['cold_start_ready_s']:.1f} s", flush=True)

            t = time.perf_counter()
            page.get_by_role("link", name="Importance").click()
            page.wait_for_selector("text=SEPTQ importance of 0.self_attn.q_proj", timeout=600_000)
            results["importance_first_visit_s"] = time.perf_counter() - t
            print(f"Importance first visit (FP calibration pass + all scores): "
                  f"{results['importance_first_visit_s']:.1f} s", flush=True)

            redraw = {}
            for module in ["self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                           "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "mlp.down_proj"]:
                page.locator("[data-testid=stSelectbox]").filter(has_text="Module").first.click()
                option = page.get_by_role("option", name=module, exact=True)
                option.wait_for()
                t = time.perf_counter()  # from the click on the new module
                option.click()
                page.wait_for_selector(f"text=SEPTQ importance of 0.{module}", timeout=120_000)
                shown = time.perf_counter() - t
                page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=120_000)
                settled = time.perf_counter() - t
                redraw.setdefault(module, []).append({"heatmap_shown_s": shown, "page_settled_s": settled})
                print(f"after choosing {module}: heatmap shown {shown:.2f} s, page settled {settled:.2f} s",
                      flush=True)
            results["importance_redraw_s"] = redraw
            chromium.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results["largest_ws_frame_bytes"] = max(frames, default=0)
    print(f"largest websocket message received: {max(frames, default=0):,} bytes", flush=True)


def figure_sizes(results: dict) -> None:
    """The largest plotly figure (JSON spec) of each page, drawn by AppTest on the default model."""
    from streamlit.testing.v1 import AppTest

    os.environ.pop("SEPTQ_DEFAULT_MODEL", None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900).run()
    sizes = {}

    def measure(name: str):
        if at.exception:
            raise RuntimeError(f"{name}: {at.exception[0].value}")
        specs = {e.proto.id or str(i): len(e.proto.spec) for i, e in enumerate(at.get("plotly_chart"))}
        sizes[name] = max(specs.values(), default=0)
        print(f"{name}: {len(specs)} figures, largest {sizes[name]:,} bytes", flush=True)

    for page in ("views/importance.py", "views/mask.py", "views/learn.py"):
        at.switch_page(page).run()
        measure(page)
    at.switch_page("views/importance.py").run()
    script = {}
    for module in ("mlp.down_proj", "self_attn.q_proj", "mlp.down_proj"):
        t = time.perf_counter()
        at.selectbox(key="imp_module").select(module).run()
        visit = "revisit" if module in script else "first visit"
        script.setdefault(module, {})[visit] = time.perf_counter() - t
        print(f"Importance script run after choosing {module} ({visit}): {script[module][visit]:.2f} s")
        measure(f"views/importance.py ({module})")
    results["importance_script_s"] = script
    results["largest_figure_bytes"] = sizes
    worst = max(sizes.values())
    print(f"largest figure: {worst:,} bytes ({worst / LIMIT_BYTES:.2f} of the 2 MB limit)", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    parser.add_argument("--no-figures", action="store_true", help="skip the AppTest part (figure sizes)")
    args = parser.parse_args(argv)
    results: dict = header("app", argv)
    if not args.no_browser:
        browser(results)
    if not args.no_figures:
        figure_sizes(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "app.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {RESULTS / 'app.json'}")


if __name__ == "__main__":
    main()
