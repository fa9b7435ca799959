"""Serving the app on a free port and driving it in headless Chromium (Debian's package).

Shared by the browser tests and ``bench/startup.py``. Never calls ``playwright install``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(env: dict[str, str], port: int | None = None, timeout: float = 60.0, script: str = "app.py"):
    """Start ``streamlit run <script>`` and yield ``(base_url, seconds_until_healthy)``."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"streamlit did not become healthy within {timeout} s")
            time.sleep(0.05)
        yield url, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium_page(width: int = 1440, height: int = 1000):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


# Home is drawn when its class chart (plain HTML: core.charts.class_balance_html) is on the page
HOME_READY = ".medaug-balance"


def wait_rendered(page, selector: str, timeout_ms: int = 60_000) -> None:
    """Wait until ``selector`` is visible and Streamlit has stopped running the script."""
    page.wait_for_selector(selector, timeout=timeout_ms, state="visible")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def tall_screenshot(page, path, max_height: int = 6000) -> None:
    """Screenshot the whole page. Streamlit scrolls inside its main container, so
    ``full_page`` alone shows one screen: grow the viewport to the content first."""
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], section.main, body')]"
        ".map(e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": min(max_height, max(size["height"], height))})
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
