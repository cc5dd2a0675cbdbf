"""The node's results in a real OHIF Viewer: what a radiologist's zero-footprint viewer asks of the
node's DICOMweb port, and what it shows.

    npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz     # the built viewer, from npm
    python benchmarks/ohif.py --ohif package/dist [--images ../shared/data/fullres_samples] [--n 3]

A node (``pneumolens listen --sr --gsps --seg --qr --keep --dicomweb-port --dicomweb-cors``, the
shipped model unless ``--model``) takes ``--n`` original-resolution samples over STOW-RS (each a
12-bit DX file as ``benchmarks/node.py`` makes them, with a made-up detector spacing of 0.15 mm);
OHIF's built files are served on another loopback port with a configuration whose one data source
is the node; Debian's Chromium (headless, through Playwright; software WebGL) opens each study in
OHIF's viewer. Prints two markdown tables: per study, the seconds OHIF reports from study to first
image and whether the viewport holds an image (the grey levels' spread in a screenshot of it); per
kind of request the node answered (QIDO-RS, metadata, frames, thumbnails), how many and with which
HTTP statuses. Then, for the first study, each series opened in the viewport in turn: shown, or the
first error OHIF logged, and the labels OHIF drew over the image (a report's measurements). Only
loopback is contacted; the node's files go to a temporary folder.
Not part of the test suite: it needs OHIF's 200 MB build, which CI does not fetch.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import io
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from node import _free_port, as_dicom  # benchmarks/node.py: the same DX files
from PIL import Image

CONFIG = """window.config = {{
  routerBasename: '/', extensions: [], modes: [], showStudyList: true, maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'pneumolens',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'pneumolens',
    configuration: {{
      friendlyName: 'pneumolens node', name: 'pneumolens',
      wadoUriRoot: '{root}', qidoRoot: '{root}', wadoRoot: '{root}',
      qidoSupportsIncludeField: true, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      singlepart: 'bulkdata', bulkDataURI: {{ enabled: true }}, omitQuotationForMultipartRequest: true,
    }},
  }}],
}};"""
KINDS = [  # (kind, pattern of the request path after /dicomweb)
    ("thumbnail", r"/thumbnail$|/rendered$"),
    ("frames", r"/frames/[\d,]+$"),
    ("bulk data", r"/bulkdata/"),
    ("metadata", r"/metadata$"),
    ("QIDO-RS search", r"/studies$|/series$|/instances$"),
    ("whole objects", r".*"),
]


def serve_ohif(dist: Path, root: str) -> tuple[http.server.ThreadingHTTPServer, int]:
    """OHIF's built files on a loopback port, its configuration replaced by one pointing at ``root``."""
    config = CONFIG.format(root=root).encode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if path == "/app-config.js":
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(config)))
                self.end_headers()
                self.wfile.write(config)
                return
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # a single-page app: its routes are index.html's
            super().do_GET()

    Handler.extensions_map[".wasm"] = "application/wasm"
    port = _free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def start_node(folder: Path, web: int, origin: str, model: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "pneumolens", "listen", "--out", str(folder / "out"), "--keep"]
    command += [str(folder / "keep"), "--sr", "--gsps", "--seg", "--qr", "--port", str(_free_port())]
    command += ["--dicomweb-port", str(web), "--dicomweb-cors", origin, *(["--model", model] if model else [])]
    return subprocess.Popen(command, stderr=open(folder / "node.log", "w"))


def spread(png: bytes) -> float:
    """The standard deviation of a screenshot's grey levels: about 0 for an empty viewport."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).std())


def kind_of(url: str) -> str:
    path = url.split("?")[0].split("/dicomweb", 1)[-1]
    return next(kind for kind, pattern in KINDS if re.search(pattern, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ohif", required=True, help="OHIF's built viewer (package/dist of @ohif/app)")
    parser.add_argument("--images", default="../shared/data/fullres_samples")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--model", help="default: the shipped model")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", help="also save the viewer's screenshots here (they show the films)")
    args = parser.parse_args()
    from dicomweb_client.api import DICOMwebClient
    from playwright.sync_api import sync_playwright

    dist = Path(args.ohif)
    if not (dist / "index.html").is_file():
        sys.exit(f"--ohif {dist}: no index.html (expected the dist folder of @ohif/app)")
    web = _free_port()
    root = f"http://127.0.0.1:{web}/dicomweb"
    server, ohif_port = serve_ohif(dist, root)
    origin = f"http://127.0.0.1:{ohif_port}"
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp), web, origin, args.model)
        try:
            client = DICOMwebClient(root)
            for _ in range(180):  # the model loads first
                try:
                    client.search_for_studies()
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    time.sleep(1)
            studies = []
            jpegs = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
            if not jpegs:
                sys.exit(f"--images {args.images}: no JPEG files")
            for jpeg in jpegs[: args.n]:
                ds = as_dicom(jpeg)
                ds.ImagerPixelSpacing = [0.15, 0.15]
                client.store_instances([ds])
                studies.append(ds.StudyInstanceUID)
            asked: collections.Counter = collections.Counter()
            rows, series_rows = [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on(
                    "response",
                    lambda r: asked.update([(kind_of(r.url), r.status)]) if r.url.startswith(root) else None,
                )
                for i, study in enumerate(studies):
                    console.clear()
                    page.goto(f"{origin}/viewer?StudyInstanceUIDs={study}")
                    first = None
                    for _ in range(120):
                        found = [re.search(r"studyToFirstImage: ([\d.]+) ms", c) for c in console]
                        first = next((float(m.group(1)) / 1000 for m in found if m), None)
                        if first is not None:
                            break
                        page.wait_for_timeout(500)  # Playwright delivers console events while it waits
                    page.wait_for_timeout(2000)
                    shown = spread(page.locator(".cornerstone-viewport-element").first.screenshot())
                    rows.append((i + 1, first, shown))
                    if i == 0:
                        series_rows = open_each_series(page, console, args.screenshots)
                browser.close()
        finally:
            node.terminate()
            node.wait(30)
            server.shutdown()
    print("| study | study to first image (s, OHIF's timer) | viewport grey-level spread (0: empty) |")
    print("|---|---|---|")
    for i, first, shown in rows:
        print(f"| {i} | {'none in 60 s' if first is None else f'{first:.2f}'} | {shown:.1f} |")
    print("\n| request to the node | answered | HTTP statuses |")
    print("|---|---|---|")
    for kind, _ in KINDS:
        statuses = {status: n for (k, status), n in asked.items() if k == kind}
        if statuses:
            text = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
            print(f"| {kind} | {sum(statuses.values())} | {text} |")
    print("\n| series of study 1, opened in the viewport | outcome in OHIF |")
    print("|---|---|")
    for name, outcome in series_rows:
        print(f"| {name} | {outcome} |")


def open_each_series(page, console: list[str], screenshots: str | None) -> list[tuple[str, str]]:
    """Each series of the open study double-clicked in OHIF's study browser, the page loaded afresh
    before each (so that no series shows what an earlier one drew): shown (an image in the viewport
    and no error logged, with the labels drawn over it), or the first error OHIF logged."""
    outcomes = []
    for modality in ("DX", "OT", "SR", "PR", "SEG"):
        page.reload()
        page.wait_for_timeout(8000)
        try:  # OHIF's first-visit tour stands over the study browser
            page.get_by_text("Skip all").click(timeout=3000)
        except Exception:  # noqa: BLE001 - no tour
            pass
        console.clear()
        try:
            page.get_by_text(modality, exact=True).first.dblclick(timeout=10_000)
        except Exception as e:  # noqa: BLE001 - Playwright's timeout: not listed
            outcomes.append((modality, f"not listed ({type(e).__name__})"))
            continue
        page.wait_for_timeout(8000)
        if screenshots:
            Path(screenshots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(screenshots) / f"{modality}.png"))
        errors = [c for c in console if c.startswith("error:") or "Error Boundary" in c]
        if errors:
            outcomes.append((modality, errors[0].splitlines()[0].split(": ", 1)[1][:160].replace("|", "/")))
        else:
            shown = spread(page.locator(".cornerstone-viewport-element").first.screenshot())
            labels = drawn_labels(page)
            drawn = f"; {len(labels)} labels drawn: " + ", ".join(f"'{t}'" for t in labels) if labels else ""
            outcomes.append((modality, f"shown (grey-level spread {shown:.1f}{drawn})"))
    return outcomes


def drawn_labels(page) -> list[str]:
    """The text of each annotation label Cornerstone drew over the viewport (an SVG group per
    annotation's label, a line per tspan, joined by " / "), sorted; empty when nothing is drawn."""
    lines = "gs => gs.map(g => Array.from(g.querySelectorAll('tspan'), t => t.textContent.trim()).join(' / '))"
    return sorted(t for t in page.eval_on_selector_all("g[data-annotation-uid]", lines) if t)


if __name__ == "__main__":
    main()
