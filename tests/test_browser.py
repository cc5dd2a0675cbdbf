"""The web page in a real headless Chromium (Playwright): upload an X-ray, see probability and heatmap."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import uvicorn

from conftest import real_images
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def server(trained_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app(Settings(model=str(trained_run))), "127.0.0.1", port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_shows_probability_and_heatmap(server):
    from playwright.sync_api import sync_playwright

    xray = real_images("test", "PNEUMONIA", 1)[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(server + "/")
            assert "does not replace" in page.inner_text(".notice")
            page.set_input_files("#file", str(xray))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            probability = float(page.inner_text("#probability"))
            assert 0.0 <= probability <= 1.0
            assert "operating point" in page.inner_text("#decision")
            src = page.get_attribute("#heatmap", "src")
            assert src.startswith("data:image/png;base64,")
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=10_000)
        finally:
            browser.close()
