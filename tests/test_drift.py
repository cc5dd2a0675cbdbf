"""Drift between two windows of the audit trail (``pneumolens audit --drift``), on calls the shipped
model made on real films through the watch folder."""

from __future__ import annotations

import http.server
import json
import math
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import free_port, load_benchmark, make_dicom, real_images
from pneumolens.cli import main
from pneumolens.data.dicom import device_of
from pneumolens.data.images import read_image
from pneumolens.monitoring.audit import AuditLog
from pneumolens.monitoring.drift import (
    CHECK,
    MIN_PREDICTIONS,
    OUT_OF_SCOPE,
    PNEUMONIA,
    PROBABILITY,
    REFUSED,
    compare,
    window,
)
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

NORMAL = real_images("test", "NORMAL", 40)
SICK = real_images("test", "PNEUMONIA", 80)
RB = load_benchmark("robustness")


def _row(decision: str, p: float | None = None, flags: tuple[str, ...] = (), measures: dict | None = None) -> dict:
    row = {"time": "2026-12-06T10:00:00.000+00:00", "decision": decision, "probability": p, "flags": json.dumps(flags)}
    return row | {"measures": json.dumps(measures) if measures else None}


def test_a_window_counts_films_refusals_and_check_flags_apart_from_the_caution():
    w = window(
        [
            _row("PNEUMONIA", 0.9, ("grey_lungs",), {"lung_median": 0.55, "noise": 0.002}),
            _row("NORMAL", 0.1, ("mirrored", "grey_lungs"), {"lung_median": None, "noise": 0.003}),
            _row("NORMAL", 0.2),
            _row("refused") | {"error": "corrupt or truncated image"},
            _row("refused") | {"error": "out of scope: not a frontal view (View Position LL)"},  # a lateral
            _row("pruned"),  # the trail's own note: not an input
        ]
    )
    assert (w.predictions, w.refused, w.out_of_scope, w.inputs, w.called, w.checked) == (3, 1, 1, 5, 1, 1)
    assert w.flags == {"grey_lungs": 2, "mirrored": 1} and w.probabilities == [0.9, 0.1, 0.2]
    assert w.measures == {"lung_median": [0.55], "noise": [0.002, 0.003]}  # a film without lungs has no median


def test_compare_uses_fisher_and_bonferroni_as_computed_by_hand():
    # 30 films all called pneumonia against 30 none: two-sided Fisher p = 2 / C(60, 30); probabilities
    # that do not overlap: the exact KS p for two samples of 30 is 2 / C(60, 30) as well.
    base = window([_row("PNEUMONIA", 0.9)] * 30)
    recent = window([_row("NORMAL", 0.1)] * 30)
    report = compare(base, recent)
    called = next(t for t in report.tests if t.name == PNEUMONIA)
    assert called.p == pytest.approx(2 / math.comb(60, 30), rel=1e-6)
    assert called.p_adjusted == pytest.approx(called.p * len(report.tests)) and called.alert
    probability = next(t for t in report.tests if t.name == PROBABILITY)
    assert probability.p == pytest.approx(2 / math.comb(60, 30), rel=1e-6) and probability.alert
    # no refusals, no films out of scope, no flags on either side
    assert [t.name for t in report.tests if not t.alert] == [REFUSED, OUT_OF_SCOPE, CHECK]
    # the measures are tested where both windows hold enough of them: here the detail of every film
    base = window([_row("PNEUMONIA", 0.9, measures={"detail": 0.5 + i / 100}) for i in range(31)])
    recent = window([_row("PNEUMONIA", 0.9, measures={"detail": 0.1 + i / 100}) for i in range(31)])
    detail = {t.name: t for t in compare(base, recent).tests}["detail"]
    assert detail.p == pytest.approx(2 / math.comb(62, 31), rel=1e-6) and detail.alert
    assert (detail.baseline, detail.recent) == ("median 0.65", "median 0.25")
    assert report.drift and "DRIFT" in str(report)
    with pytest.raises(ValueError, match=f"recent window holds 29 films read; at least {MIN_PREDICTIONS}"):
        compare(base, window([_row("NORMAL", 0.1)] * 29))
    with pytest.raises(ValueError, match="alpha"):
        compare(base, recent, alpha=1.5)


def _watch(files, folder, db) -> None:
    """Score ``files`` through the watch folder (the shipped model) into the trail ``db``."""
    folder.mkdir()
    for i, f in enumerate(files):
        if isinstance(f, np.ndarray):
            Image.fromarray((f * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
        elif isinstance(f, bytes):
            (folder / f"{i:03d}.jpeg").write_bytes(f)
        else:
            shutil.copyfile(f, folder / f"{i:03d}{f.suffix}")
    assert main(["watch", str(folder), "--once", "--db", db]) == 0


def _cut() -> str:
    time.sleep(0.01)
    cut = datetime.now(UTC).isoformat(timespec="milliseconds")
    time.sleep(0.01)
    return cut


@pytest.fixture(scope="module")
def trails(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """One baseline (20 normal, 20 pneumonia test films), copied into three trails, each then given
    another recent window: the same mix of other films, pneumonia films only, and the same mix with
    the normal films mirrored and a quarter of the inputs broken files. Name -> (database, cut)."""
    tmp = tmp_path_factory.mktemp("trails")
    base_dir = tmp / "trail"
    base_dir.mkdir()
    _watch(NORMAL[0::2] + SICK[0:20], tmp / "base", f"sqlite:///{base_dir / 'audit.sqlite'}")
    recent = {
        "same mix": NORMAL[1::2] + SICK[20:40],
        "pneumonia only": SICK[40:80],
        "mirrored, broken": [read_image(f)[:, ::-1] for f in NORMAL[1::2]] + SICK[20:40] + [b"\xff\xd8 cut"] * 13,
        "half resolution": [RB.degraded(read_image(f), "resolution 1/2", 0) for f in NORMAL[1::2] + SICK[20:40]],
    }
    out = {}
    for i, (name, files) in enumerate(recent.items()):
        trail = tmp / f"trail{i}"
        shutil.copytree(base_dir, trail)  # the database with its salt and key
        db = f"sqlite:///{trail / 'audit.sqlite'}"
        cut = _cut()
        _watch(files, tmp / f"recent{i}", db)
        out[name] = db, cut
    return out


def test_drift_is_found_where_the_films_changed_and_not_where_they_did_not(trails, capsys):
    reports, codes = {}, {}
    for name, (db, cut) in trails.items():
        capsys.readouterr()
        codes[name] = main(["audit", "--db", db, "--drift", cut])
        reports[name] = capsys.readouterr().out
    assert codes == {"same mix": 0, "pneumonia only": 1, "mirrored, broken": 1, "half resolution": 1}, reports

    def drifted(name: str) -> set[str]:
        lines = [ln for ln in reports[name].splitlines() if ln.endswith("DRIFT")]
        return {ln.split("  ")[0].strip() for ln in lines}

    assert (
        "baseline: 40 films read, 0 refused, 0 out of scope" in reports["same mix"]
        and "no drift found" in reports["same mix"]
    )
    assert drifted("same mix") == set()
    assert {PNEUMONIA, PROBABILITY} <= drifted("pneumonia only") and CHECK not in drifted("pneumonia only")
    assert {REFUSED, CHECK, "flag mirrored"} <= drifted("mirrored, broken")
    assert "recent:   40 films read, 13 refused, 0 out of scope" in reports["mirrored, broken"]
    # half the resolution: the films lose fine detail before many cross the low_detail bound
    assert "detail" in drifted("half resolution") and PNEUMONIA not in drifted("half resolution")


def test_the_server_reports_drift_and_says_when_it_cannot(trails):
    db, cut = trails["pneumonia only"]
    with TestClient(create_app(Settings(audit_url=db))) as client:
        found = client.get("/api/v1/drift", params={"recent": cut})
        too_few = client.get("/api/v1/drift", params={"recent": "2999-01-01"})
        bad_date = client.get("/api/v1/drift", params={"recent": "last week"})
        bad_order = client.get("/api/v1/drift", params={"recent": cut, "since": "2999-01-01"})
        bad_alpha = client.get("/api/v1/drift", params={"recent": cut, "alpha": 2})
    body = found.json()
    assert found.status_code == 200 and body["drift"] is True
    assert body["baseline"]["films_read"] == 40 and body["recent"]["films_read"] == 40
    alerts = {m["name"] for m in body["tests"] if m["alert"]}
    assert {PNEUMONIA, PROBABILITY} <= alerts and CHECK not in alerts
    assert too_few.status_code == 200 and too_few.json()["drift"] is None
    assert "recent window holds 0 films read" in too_few.json()["reason"]
    assert bad_date.status_code == 422 and "recent 'last week'" in bad_date.json()["detail"]
    assert bad_order.status_code == 422 and "must come before" in bad_order.json()["detail"]
    assert bad_alpha.status_code == 422


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []
    status = 200
    first: list[int] = []  # statuses answered before ``status``, one per request

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        _Hook.bodies.append({"type": self.headers["Content-Type"], **json.loads(self.rfile.read(length))})
        self.send_response(_Hook.first.pop(0) if _Hook.first else _Hook.status)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def hook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.bodies, _Hook.status, _Hook.first = [], 200, []
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/SECRET-TOKEN"
    server.shutdown()


def test_a_drift_alert_reaches_a_webhook_and_a_quiet_week_sends_nothing(trails, hook, capsys, monkeypatch):
    monkeypatch.setattr("pneumolens.monitoring.alert.RETRY_WAITS", (0.01, 0.01))
    db, cut = trails["pneumonia only"]
    assert main(["audit", "--db", db, "--drift", cut, "--notify", hook]) == 1
    out = capsys.readouterr()
    (sent,) = _Hook.bodies
    assert sent["type"] == "application/json" and sent["source"] == "pneumolens"
    assert "drift alert" in sent["text"] and PNEUMONIA in sent["text"] and "40 films read" in sent["text"]
    assert sent["report"]["drift"] is True and sent["report"]["recent"]["films_read"] == 40
    assert "alert sent to http://127.0.0.1:" in out.out and "SECRET-TOKEN" not in out.out + out.err
    db, cut = trails["same mix"]
    assert main(["audit", "--db", db, "--drift", cut, "--notify", hook]) == 0 and len(_Hook.bodies) == 1
    # a webhook briefly down (503, then 429) gets the alert on the third attempt, and it is sent once
    _Hook.bodies, _Hook.first = [], [503, 429]
    db, cut = trails["pneumonia only"]
    assert main(["audit", "--db", db, "--drift", cut, "--notify", hook]) == 1
    assert len(_Hook.bodies) == 3 and "(attempt 3)" in capsys.readouterr().out
    # an alert that cannot be delivered is said and kept beside the database, and the drift still
    # sets the exit status: three attempts for a server error, one for an answer that will not change
    kept = Path(db.removeprefix("sqlite:///")).parent / "alerts-outbox"
    for status, attempts, waiting in ((500, 3, 1), (404, 2, 2)):  # 404: the kept one tried once, then the new one
        _Hook.bodies, _Hook.status = [], status
        assert main(["audit", "--db", db, "--drift", cut, "--notify", hook]) == 1
        err = capsys.readouterr().err
        assert f"the alert was refused (HTTP {status})" in err and f"kept in {kept}" in err
        assert "SECRET-TOKEN" not in err and len(_Hook.bodies) == attempts and len(list(kept.glob("*.json"))) == waiting
    assert "1 earlier alert(s) still waiting" in err
    closed = f"http://127.0.0.1:{free_port()}/hook"
    assert main(["audit", "--db", db, "--drift", cut, "--notify", closed]) == 1
    assert "the alert could not be delivered" in capsys.readouterr().err and len(list(kept.glob("*.json"))) == 3
    # the webhook is back: a quiet week sends the three kept alerts, oldest first, marked late, and nothing new
    _Hook.bodies, _Hook.status = [], 200
    quiet_db, quiet_cut = trails["same mix"]
    same_place = Path(quiet_db.removeprefix("sqlite:///")).parent / "alerts-outbox"
    same_place.mkdir()
    for path in sorted(kept.glob("*.json")):
        path.replace(same_place / path.name)
    assert main(["audit", "--db", quiet_db, "--drift", quiet_cut, "--notify", hook]) == 0
    assert "3 earlier alert(s) sent" in capsys.readouterr().out and not list(same_place.glob("*.json"))
    assert len(_Hook.bodies) == 3 and all("undelivered then]" in body["text"] for body in _Hook.bodies)
    stamps = [body["text"].split("[first tried ")[1] for body in _Hook.bodies]
    assert stamps == sorted(stamps)  # oldest first
    for args, message in (
        (["--drift", cut, "--notify", "ftp://x/y"], "--notify: expected an http:// or https:// URL"),
        (["--notify", hook], "--notify sends the alert of --drift or --agreement; give one of them too"),
    ):
        assert main(["audit", "--db", db, *args]) == 2
        assert message in capsys.readouterr().err


def test_drift_needs_enough_films_on_both_sides(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    _watch(SICK[:5], tmp_path / "few", db)
    capsys.readouterr()
    assert main(["audit", "--db", db, "--drift", "2999-01-01"]) == 2
    assert "baseline window holds 5 films read" in capsys.readouterr().err
    assert main(["audit", "--db", db, "--drift", "1d", "--since", "2999-01-01"]) == 2
    assert "baseline's start (since) must come before" in capsys.readouterr().err


def test_a_new_device_is_a_drift_and_one_device_can_be_checked_alone(tmp_path, capsys):
    # 40 films from device A before; then 30 from A and 30 from a new device B, read alike: the new
    # device's share drifts, while A alone, or the calls, do not.
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    model = {"name": "m", "version": "0", "sha256": "ab" * 32, "preprocessing": {}}

    def film(i: int, device: str) -> None:
        label = "PNEUMONIA" if i % 2 else "NORMAL"
        result = {"probability": 0.3 + 0.4 * (i % 2) + i / 1000, "threshold": 0.5, "label": label, "flags": []}
        audit.record("listen", f"{device}{i:063x}"[:64], model, result, device=f"ACME {device}")

    for i in range(40):
        film(i, "A")
    cut = _cut()
    for i in range(30):
        film(i, "A")
        film(i, "B")
    db = audit.url
    assert main(["audit", "--db", db, "--drift", cut]) == 1
    out = capsys.readouterr().out
    drifted = {ln.split("  ")[0].strip() for ln in out.splitlines() if ln.endswith("DRIFT")}
    assert drifted == {"device ACME B", "device ACME A"}, out  # A's share fell from 100% to 50%
    assert main(["audit", "--db", db, "--drift", cut, "--device", "ACME A"]) == 0
    assert "baseline: 40 films read" in (report := capsys.readouterr().out) and "recent:   30 films read" in report
    assert main(["audit", "--db", db, "--drift", cut, "--device", "ACME B"]) == 2
    assert "baseline window holds 0 films read" in capsys.readouterr().err
    assert main(["audit", "--db", db, "--device", "ACME A"]) == 2 and "give --drift too" in capsys.readouterr().err


def test_device_of_reads_make_and_model_from_the_header_only(tmp_path):
    gray = (read_image(SICK[0]) * 255).round().astype(np.uint8)
    path = make_dicom(tmp_path / "a.dcm", gray)
    assert device_of(path.read_bytes()) is None  # no make or model in the header
    ds = pydicom.dcmread(path)
    ds.Manufacturer, ds.ManufacturerModelName = "ACME ", "DX-1"
    ds.save_as(path)
    assert device_of(path.read_bytes()) == "ACME DX-1"
    assert device_of(path.read_bytes()[:-1000]) == "ACME DX-1"  # pixel data cut short: the header is enough
    assert device_of(SICK[0].read_bytes()) is None and device_of(b"") is None
