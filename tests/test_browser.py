"""The web page in a real headless Chromium (Playwright): upload an X-ray, see probability and heatmap."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import uvicorn
from PIL import Image

from conftest import real_images
from pneumolens.checkpoint import load_model
from pneumolens.monitoring.audit import AuditLog
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@contextmanager
def _serving(settings: Settings):
    """The app under uvicorn on a free local port; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(trained_run):
    with _serving(Settings(model=str(trained_run))) as url:
        yield url


@contextmanager
def _browser():
    from playwright.sync_api import sync_playwright

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
            yield browser
        finally:
            browser.close()


def test_upload_shows_probability_and_heatmap(server, trained_run):
    xray = real_images("test", "PNEUMONIA", 1)[0]
    with _browser() as browser:
        page = browser.new_page()
        page.goto(server + "/")
        assert "does not replace" in page.inner_text(".notice")
        page.fill("#age", "45")  # a JPEG says no age: the reader gives it, for the age caution
        with page.expect_response(lambda r: "/api/v1/predict" in r.url, timeout=60_000) as answer:
            page.set_input_files("#file", str(xray))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert "older than the patients the model learnt from" in page.inner_text("#warning")
        assert "age" not in answer.value.url  # sent as a form field: URLs end up in access logs
        probability = float(page.inner_text("#probability"))
        assert 0.0 <= probability <= 1.0
        assert "operating point" in page.inner_text("#decision")
        # the scale: the probability, the operating point and the model's borderline band where the API puts them
        scored = answer.value.json()
        (low, high), t = scored["borderline"], scored["threshold"]
        assert low <= t <= high and low == load_model(trained_run).borderline["low"]
        at = {k: float(page.get_attribute(f"#scale-{part}", k)) for part, k in (("marker", "cx"), ("threshold", "x1"))}
        assert at["cx"] == pytest.approx(500 * scored["probability"], abs=0.06)
        assert at["x1"] == pytest.approx(500 * t, abs=0.06)
        band = [float(page.get_attribute("#scale-band", k)) for k in ("x", "width")]
        assert band == pytest.approx([500 * low, 500 * (high - low)], abs=0.2)
        assert f"borderline band ({low:.3f} to {high:.3f})" in page.inner_text("#scale-caption")
        src = page.get_attribute("#heatmap", "src")
        assert src.startswith("data:image/png;base64,")
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=10_000)
        # the map's outlines over the uploaded image, in its own pixels, and a switch for them
        page.wait_for_function("document.querySelectorAll('#outlines polyline').length > 0", timeout=10_000)
        width, height = Image.open(xray).size
        assert page.get_attribute("#outlines", "viewBox") == f"0 0 {width} {height}"
        n = page.locator("#outlines polyline").count()
        assert 1 <= n <= 3 and f"({n} region" in page.inner_text("#outline-count")
        first = [tuple(map(float, p.split(","))) for p in page.get_attribute("#outlines polyline", "points").split()]
        assert first[0] == first[-1] and all(0 <= x <= width and 0 <= y <= height for x, y in first)
        left, top, right, bottom = answer.value.json()["read_box"]  # the part the model read, dashed
        rect = [float(page.get_attribute("#outlines rect", k)) for k in ("x", "y", "width", "height")]
        assert rect == [left, top, right - left, bottom - top] and 0 < rect[2] <= width and 0 < rect[3] <= height
        page.uncheck("#show-outlines")
        assert not page.is_visible("#outlines")
        # the reader's own read, recorded beside the prediction; the Recent results page pairs them
        call = "PNEUMONIA" if "PNEUMONIA" in page.inner_text("#decision") else "NORMAL"
        page.click("#review button[data-label=PNEUMONIA]")
        page.wait_for_function("document.getElementById('review-status').textContent.startsWith('Recorded')")
        verdict = "agrees with" if call == "PNEUMONIA" else "differs from"
        assert page.inner_text("#review-status") == f"Recorded: PNEUMONIA ({verdict} the model's call, {call})."
        page.goto(server + "/recent")
        page.wait_for_selector("#reads:not([hidden])", timeout=30_000)
        cells = page.inner_text("#reads tbody tr:first-child").split("\t")
        assert int(cells[1]) >= 1 and int(cells[2]) >= 1  # reviewed films, reads of pneumonia
        assert "not a validation study" in page.inner_text("#agreement")
        assert "read PNEUMONIA" in page.inner_text("#rows tbody tr:first-child")  # the newest row: the read


def test_about_this_model_shows_what_the_card_records(server):
    """Opened, "About this model" shows the model's validation figures; a model other than the
    shipped one gets no test row and no shipped model's limits (the shipped one's: next test)."""
    with _browser() as browser:
        page = browser.new_page()
        page.goto(server + "/")
        assert not page.is_visible("#about-figures")
        with page.expect_response(lambda r: r.url.endswith("/api/v1/model"), timeout=30_000) as answer:
            page.click("#about summary")
        page.wait_for_selector("#about-figures:not([hidden])", timeout=30_000)
        card = answer.value.json()
        rows = page.locator("#about-figures tbody tr")
        assert rows.count() == 1 and f"validation ({card['validation_metrics']['n']} films" in rows.first.inner_text()
        assert f"{100 * card['validation_metrics']['specificity']:.1f}%" in rows.first.inner_text()
        assert "other than the shipped one" in page.inner_text("#about-text") and not page.is_visible("#about-limits")
        page.click("#about-full")  # the full card, fetched with the tab's token like every API call
        page.wait_for_selector("#about-card:not([hidden])", timeout=30_000)
        assert page.inner_text("#about-card").startswith("# Model card: pneumolens-seed")


def test_about_a_model_with_undefined_figures_says_n_a(trained_run, tmp_path):
    """A validation split of one class has no ROC-AUC and no specificity: the page says n/a rather
    than 0.0% or failing."""
    from pneumolens.checkpoint import save_model

    loaded = load_model(trained_run)
    val = {**loaded.meta["metrics"]["val"], "roc_auc": None, "specificity": None}
    save_model(tmp_path / "m.safetensors", loaded.model, {**loaded.meta, "metrics": {"val": val}})
    with _serving(Settings(model=str(tmp_path / "m.safetensors"))) as url, _browser() as browser:
        page = browser.new_page()
        page.goto(url + "/")
        page.click("#about summary")
        page.wait_for_selector("#about-figures:not([hidden])", timeout=30_000)
        cells = page.locator("#about-figures tbody tr").first.inner_text().split("\t")
        assert cells[2:] == ["n/a", f"{100 * val['accuracy']:.1f}%", "n/a"] and cells[1].endswith("%")


def test_about_the_shipped_model_shows_its_test_figures_and_limits():
    import json

    from pneumolens.checkpoint import shipped_model_path

    record = json.loads(shipped_model_path().with_name("default_test_metrics.json").read_text())
    with _serving(Settings()) as url, _browser() as browser:
        page = browser.new_page()
        page.goto(url + "/")
        page.click("#about summary")
        page.wait_for_selector("#about-figures:not([hidden])", timeout=30_000)
        test = page.locator("#about-figures tbody tr").nth(1).inner_text()
        low, high = record["ci"]["specificity"]
        assert f"test ({record['n']} films, {record['n_patients']} patients)" in test
        assert f"{100 * record['specificity']:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]" in test
        assert "children aged one to five from one hospital" in page.inner_text("#about-text")
        assert "not validated on children of other hospitals" in page.inner_text("#about-limits")
        se, sp, q = record["sensitivity"], record["specificity"], 0.05
        ppv = se * q / (se * q + (1 - sp) * (1 - q))
        said = page.inner_text("#about-prevalence")
        assert f"Where 5% of films show pneumonia, {100 * ppv:.1f}% of its pneumonia calls would be right" in said
        assert "(62.5% of its films)" in said and "; at 30%, " in said


@pytest.mark.parametrize("kind", ["dicom", "tiff"])
def test_a_dicom_or_tiff_upload_is_shown_with_its_outlines(server, tmp_path, kind):
    """A browser cannot decode DICOM or TIFF: the page shows the image the server read (image_png),
    scaled, with the outlines in the file's own pixel grid (Columns x Rows)."""
    import numpy as np

    from conftest import make_dicom
    from pneumolens.data.images import read_image

    gray = read_image(real_images("test", "PNEUMONIA", 1)[0])
    wide = np.repeat(gray, 2, axis=1)  # 448 x 224: not square, so a swapped width and height shows
    if kind == "dicom":
        path = make_dicom(tmp_path / "film.dcm", np.round((1 - wide) * 4095).astype(np.uint16), "MONOCHROME1")
    else:  # a 16-bit TIFF holding 12 bits
        path = tmp_path / "film.tif"
        Image.fromarray(np.round(wide * 4095).astype(np.uint16)).save(path)
    with _browser() as browser:
        page = browser.new_page()
        page.goto(server + "/")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.is_visible("#preview")
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=10_000)
        size = page.evaluate(
            "[document.getElementById('preview').naturalWidth, document.getElementById('preview').naturalHeight]"
        )
        assert size == [448, 224]
        assert page.get_attribute("#outlines", "viewBox") == "0 0 448 224"
        assert page.locator("#outlines polyline").count() >= 1


def test_recent_page_shows_drift(trained_run, tmp_path):
    # A trail whose films of ten days ago were called pneumonia a quarter of the time, and of today
    # every time: the page's drift panel says DRIFT and shows the measures. The old rows are written
    # with their date by hand (the trail dates rows itself), so this trail's chain does not verify.
    db = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    audit = AuditLog(db)
    model = {"name": "m", "version": "0", "sha256": "ab" * 32, "preprocessing": {}}
    for i in range(40):
        label = "PNEUMONIA" if i % 4 == 0 else "NORMAL"
        result = {"probability": 0.9 if label == "PNEUMONIA" else 0.1, "threshold": 0.5, "label": label, "flags": []}
        audit.record("watch", f"{i:064x}", model, result)
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat(timespec="milliseconds")
    with audit.engine.begin() as conn:
        conn.execute(sa.text("update predictions set time = :t"), {"t": old})
    for i in range(40):
        result = {"probability": 0.95, "threshold": 0.5, "label": "PNEUMONIA", "flags": []}
        audit.record("watch", f"{i + 40:064x}", model, result, device="ACME DX-1")
    with _serving(Settings(model=str(trained_run), audit_url=db)) as url, _browser() as browser:
        page = browser.new_page()
        page.goto(url + "/recent")
        page.wait_for_selector("#measures:not([hidden])", timeout=30_000)
        assert page.inner_text("#drift").startswith("DRIFT") and "40 films before, 40 in the last 7 days" in (
            page.inner_text("#drift")
        )
        called = page.locator("#measures tbody tr", has_text="called pneumonia").inner_text()
        assert called.startswith("called pneumonia") and "25.0% (10 of 40)" in called and called.endswith("DRIFT")
        page.wait_for_selector("#rows:not([hidden])", timeout=30_000)
        assert page.inner_text("#status") == "80 most recent rows (predictions, refusals and reviews)"
        assert page.inner_text("#agreement") == "No reads recorded yet."
        assert "ACME DX-1" in page.inner_text("#rows tbody tr:first-child")  # the newest row, from a DICOM device
        shown = page.inner_text("#rows tbody tr:last-child td:first-child")  # to the second, as a reader reads it
        assert shown == old[:19].replace("T", " ") and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", shown)
