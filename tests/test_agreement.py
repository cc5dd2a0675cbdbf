"""Clinicians' reads in the audit trail, and the model's agreement with them (``pneumolens review``,
``audit --agreement``, ``POST /api/v1/review``, ``GET /api/v1/agreement``)."""

from __future__ import annotations

import hashlib
from datetime import datetime

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from conftest import real_images
from pneumolens.cli import main
from pneumolens.monitoring.agreement import agreement_in, pair_reviews, wilson
from pneumolens.monitoring.audit import AuditLog
from pneumolens.monitoring.drift import window
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings

MODEL = {"name": "m", "version": "0.1", "sha256": "ab" * 32, "preprocessing": {}}
NEWER = {**MODEL, "sha256": "cd" * 32}


def _predict(audit: AuditLog, digest: str, label: str, model=MODEL, study: str | None = None) -> None:
    result = {"probability": 0.9 if label == "PNEUMONIA" else 0.1, "threshold": 0.5, "label": label, "flags": []}
    audit.record("serve", digest, model, result, study_uid=study)


def _h(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture()
def audit(tmp_path) -> AuditLog:
    return AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite'}")


def test_wilson_interval_matches_the_formula():
    # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z sqrt(0.016 + z^2/400) / (1 + z^2/10), z = 1.96
    cell = wilson(8, 10)
    assert cell["rate"] == 0.8 and cell["low"] == pytest.approx(0.4902, abs=1e-3)
    assert cell["high"] == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) is None and wilson(0, 5)["low"] == 0.0


def test_reads_pair_with_the_calls_they_review(audit):
    """Ten films called by the model and read by a clinician: the table holds their hand-counted
    confusion, rates and kappa; a second read of a film replaces the first; a review names a film
    the trail knows, else nothing is written."""
    calls = ["PNEUMONIA"] * 6 + ["NORMAL"] * 4
    reads = ["PNEUMONIA"] * 5 + ["NORMAL"] + ["NORMAL"] * 3 + ["PNEUMONIA"]  # tp 5, fp 1, tn 3, fn 1
    for i, call in enumerate(calls):
        _predict(audit, _h(i), call)
    for i, read in enumerate(reads):
        audit.review("NORMAL" if read == "PNEUMONIA" else "PNEUMONIA", input_sha256=_h(i))  # a slip...
        found = audit.review(read, input_sha256=_h(i))  # ...corrected: the later read counts
        assert found["decision"] == calls[i] and found["input_sha256"] == _h(i)
    (row,) = agreement_in(audit).table()
    assert row["model"] == MODEL["sha256"][:12] and row["n"] == 10 and row["reads_pneumonia"] == 6
    assert row["confusion"] == [[3, 1], [1, 5]]
    assert (row["sensitivity"]["k"], row["sensitivity"]["n"]) == (5, 6)
    assert (row["specificity"]["k"], row["specificity"]["n"]) == (3, 4)
    assert (row["ppv"]["k"], row["ppv"]["n"], row["npv"]["k"], row["npv"]["n"]) == (5, 6, 3, 4)
    assert row["agreement"]["rate"] == 0.8
    po, pe = 0.8, 0.6 * 0.6 + 0.4 * 0.4  # observed agreement; by chance, both margins 6/10 pneumonia
    assert row["kappa"] == pytest.approx((po - pe) / (1 - pe))
    with pytest.raises(LookupError, match="no prediction"):
        audit.review("NORMAL", input_sha256=_h(99))
    for bad in ({"label": "normal", "input_sha256": _h(1)}, {"label": "NORMAL"}):
        with pytest.raises(ValueError):
            audit.review(**bad)
    with pytest.raises(ValueError, match="one of the two"):
        audit.review("NORMAL", input_sha256=_h(1), study_uid="1.2.3")
    assert len([r for r in audit.rows() if r["source"] == "review"]) == 20


def test_reviews_are_chained_and_drift_ignores_them(audit):
    for i in range(3):
        _predict(audit, _h(i), "NORMAL")
    before = window(audit.rows())
    audit.review("PNEUMONIA", input_sha256=_h(1))
    after = window(audit.rows())  # a read is no prediction: the drift check's counts stay
    assert (after.predictions, after.called) == (before.predictions, before.called) == (3, 0)
    assert audit.verify().problem is None and audit.verify().chained == 4
    # the agreement reads only the reviews and the rows of what they name, not the whole trail
    assert [(r["source"], r["input_sha256"]) for r in audit.review_rows()] == [("serve", _h(1)), ("review", _h(1))]
    assert agreement_in(audit).pairs == pair_reviews(audit.rows()).pairs
    with audit.engine.begin() as conn:
        conn.execute(sa.text("update predictions set reader_label = 'NORMAL' where source = 'review'"))
    assert audit.verify().problem == "row 4 was altered (its content does not match its hash)"


def test_a_study_is_called_pneumonia_when_any_of_its_images_is(audit, tmp_path):
    """Two views of one study, one called pneumonia: a read of the study pairs with PNEUMONIA; the
    study's UID is kept only salted and hashed. A review of an image newer models read pairs with the
    newest call; reviews before ``since`` are left out, and a review whose prediction was pruned is
    counted apart."""
    uid = "1.2.826.0.1.3680043.8.498.4711"
    _predict(audit, _h(1), "NORMAL", study=uid)
    _predict(audit, _h(2), "PNEUMONIA", study=uid)
    assert audit.review("NORMAL", study_uid=uid)["input_sha256"] == _h(2)  # the newest image of the study
    _predict(audit, _h(3), "PNEUMONIA")
    _predict(audit, _h(3), "NORMAL", model=NEWER)
    audit.review("NORMAL", input_sha256=_h(3))
    table = {row["model"]: row for row in agreement_in(audit).table()}
    assert set(table) == {MODEL["sha256"][:12], NEWER["sha256"][:12], "all models"}
    assert table[MODEL["sha256"][:12]]["confusion"] == [[0, 1], [0, 0]]  # the study: called, read normal
    assert table[NEWER["sha256"][:12]]["confusion"] == [[1, 0], [0, 0]]
    raw = (tmp_path / "audit.sqlite").read_bytes()
    assert uid.encode() not in raw
    rows = audit.rows()
    last_review = next(r["time"] for r in reversed(rows) if r["source"] == "review")
    assert len(pair_reviews(rows, since=last_review).pairs) == 1
    assert agreement_in(audit, datetime.fromisoformat(last_review)).pairs == pair_reviews(rows, last_review).pairs
    orphan = pair_reviews([r for r in rows if r["input_sha256"] != _h(3) or r["source"] == "review"])  # pruned
    assert orphan.unmatched == 1 and len(orphan.pairs) == 1


def test_review_and_agreement_from_the_command_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    image = real_images("test", "NORMAL", 1)[0]
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    audit = AuditLog(db)
    _predict(audit, digest, "PNEUMONIA")
    assert main(["audit", "--agreement", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == "no reviewed predictions"
    assert main(["review", str(image), "--label", "NORMAL", "--db", db]) == 0
    said = capsys.readouterr().out
    assert "the read NORMAL differs from the model's call PNEUMONIA (p=0.900" in said
    assert main(["audit", "--agreement", "--db", db]) == 0
    table = capsys.readouterr().out
    assert "| abababababab | 1 | 0 | - | 0.0% [0.0, 79.3] (0/1) |" in table and "not a validation study" in table
    other = real_images("test", "PNEUMONIA", 1)[0]
    assert main(["review", str(other), "--label", "NORMAL", "--db", db]) == 1  # never predicted
    assert "no prediction for this image" in capsys.readouterr().err
    assert main(["review", "--sha256", "XYZ", "--label", "NORMAL", "--db", db]) == 2
    assert "--sha256 'XYZ'" in capsys.readouterr().err
    assert main(["review", "--label", "NORMAL", "--db", db]) == 2
    assert "name what was read" in capsys.readouterr().err
    assert main(["review", str(tmp_path / "none.png"), "--label", "NORMAL", "--db", db]) == 2


def test_the_server_records_reads_and_reports_agreement(trained_run, tmp_path):
    """The API: a prediction returns its input's SHA-256, a read of it is recorded and paired, the
    agreement lists it; a read of an unknown image is 404, a malformed one 422, and a server without
    an audit trail says so. A DICOM study can be named by its UID."""
    db = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    image = real_images("test", "PNEUMONIA", 1)[0]
    data = image.read_bytes()
    with TestClient(create_app(Settings(model=str(trained_run), audit_url=db))) as client:
        made = client.post("/api/v1/predict?explain=false", files={"file": ("x.jpeg", data)}).json()
        assert made["input_sha256"] == hashlib.sha256(data).hexdigest()
        r = client.post("/api/v1/review", json={"input_sha256": made["input_sha256"], "label": "PNEUMONIA"})
        assert r.status_code == 200
        assert r.json()["model_call"] == made["label"] and r.json()["agrees"] == (made["label"] == "PNEUMONIA")
        unknown = client.post("/api/v1/review", json={"input_sha256": "0" * 64, "label": "NORMAL"})
        assert unknown.status_code == 404 and "no prediction" in unknown.json()["detail"]
        for bad in ({"input_sha256": "0" * 64, "label": "maybe"}, {"input_sha256": "x", "label": "NORMAL"}, {}):
            assert client.post("/api/v1/review", json=bad).status_code == 422
        assert client.post("/api/v1/review", json={"label": "NORMAL"}).status_code == 422  # names nothing
        uid = pydicom.uid.generate_uid()  # a study the DICOM node read
        AuditLog(db).record("listen", "e" * 64, MODEL, {"label": "NORMAL", "probability": 0.2}, study_uid=uid)
        by_study = client.post("/api/v1/review", json={"study_instance_uid": uid, "label": "NORMAL"})
        assert by_study.status_code == 200 and by_study.json()["agrees"] is True
        found = client.get("/api/v1/agreement").json()
        assert sum(m["n"] for m in found["rows"] if m["model"] != "all models") == 2
        by_device = client.get("/api/v1/agreement?by=device").json()
        assert by_device["by"] == "device" and {r["device"] for r in by_device["rows"]} == {"not DICOM"}
        assert client.get("/api/v1/agreement?by=ward").status_code == 422
        assert found["unmatched_reviews"] == 0 and "not a diagnosis" in found["notice"]
        assert client.get("/api/v1/agreement?since=nonsense").status_code == 422
    with TestClient(create_app(Settings(model=str(trained_run), audit=False))) as client:
        off = client.post("/api/v1/review", json={"input_sha256": "0" * 64, "label": "NORMAL"})
        assert off.status_code == 404 and "switched off" in off.json()["detail"]
        assert client.get("/api/v1/agreement").status_code == 404


def test_a_rate_credibly_below_its_floor_sets_the_exit_status_and_alerts(audit, capsys):
    """--min-sensitivity: ten films the readers call pneumonia, the model only two of them. Against a
    floor of 90% the Wilson interval [5.7%, 51.0%] lies below it: exit status 1, the line, and one
    alert to the webhook; against 50% the interval reaches above it: nothing. A floor with fewer
    reads than --min-reads (10) is not tested: exit status 2, no alert."""
    import http.server
    import json
    import threading

    posted = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    for i in range(10):
        _predict(audit, _h(i), "PNEUMONIA" if i < 2 else "NORMAL")
        audit.review("PNEUMONIA", input_sha256=_h(i))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hooks/SECRET"
    try:
        argv = ["audit", "--db", audit.url, "--agreement", "--notify", hook]
        assert main([*argv, "--min-sensitivity", "0.9"]) == 1
        out = capsys.readouterr().out
        line = "BELOW FLOOR: sensitivity of model abababababab: 20.0% [5.7, 51.0] (2/10), below the floor of 90%"
        assert line in out and "SECRET" not in out and "alert sent to http://127.0.0.1:" in out
        (alert,) = posted
        assert "agreement alert" in alert["text"] and alert["report"]["rows"][0]["n"] == 10
        assert main([*argv, "--min-sensitivity", "0.5"]) == 0  # not credibly below
        assert "BELOW FLOOR" not in capsys.readouterr().out and len(posted) == 1
        # no normal film was read: its floor cannot be tested (exit status 2), and says so
        assert main([*argv, "--min-sensitivity", "0.5", "--min-specificity", "0.5"]) == 2
        out = capsys.readouterr().out
        assert "too few reads: specificity of model abababababab: 0 read(s), 10 needed to test the floor" in out
        # nor can a floor on fewer reads than --min-reads: 2 of 10 is below 90% only with 10 counted
        assert main([*argv, "--min-sensitivity", "0.9", "--min-reads", "11"]) == 2 and len(posted) == 1
        capsys.readouterr()
    finally:
        server.shutdown()
    assert main(["audit", "--db", audit.url, "--min-sensitivity", "0.9"]) == 2
    assert "give --agreement too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["audit", "--db", audit.url, "--agreement", "--min-specificity", "90"])  # a percentage, not a fraction


def test_reads_from_a_ris_export(audit, tmp_path, capsys):
    """review --csv: reads by hash, by image file and by study; a row naming nothing the trail holds
    is listed by its row (exit status 1) and the others are recorded; a malformed row stops the
    file before anything is recorded, named by row, its value not quoted."""
    image = real_images("test", "PNEUMONIA", 1)[0]
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    uid = pydicom.uid.generate_uid()
    _predict(audit, _h(1), "NORMAL")
    _predict(audit, digest, "PNEUMONIA")
    _predict(audit, _h(2), "PNEUMONIA", study=uid)
    (tmp_path / "films").mkdir()
    (tmp_path / "films" / "a.jpeg").write_bytes(image.read_bytes())
    reads = tmp_path / "reads.csv"
    reads.write_text(
        f"sha256,path,study,label\n{_h(1)},,,normal\n,films/a.jpeg,,PNEUMONIA\n,,{uid},NORMAL\n{_h(7)},,,NORMAL\n"
    )
    db = ["--db", audit.url]
    assert main(["review", "--csv", str(reads), *db]) == 1
    out = capsys.readouterr()
    assert "recorded 3 read(s)" in out.out and "1 row(s) name nothing the audit trail holds: rows 5" in out.err
    (row,) = agreement_in(audit).table()
    assert row["n"] == 3 and row["confusion"] == [[1, 1], [0, 1]]  # the study: called, read normal
    before = len(audit.rows())
    for text, says in (
        (f"sha256,label\n{_h(1)},NORMAL\n{_h(1)},maybe\n", "row 3: label must be NORMAL or PNEUMONIA"),
        (f"sha256,study,label\n{_h(1)},{uid},NORMAL\n", "row 2: give one of sha256, path, study (found 2)"),
        ("sha256,label\nnot-a-hash,NORMAL\n", "row 2: sha256 is not 64 hex digits"),
        ("path,label\nfilms/missing-Doe-John.jpeg,NORMAL\n", "row 2: the path names no file"),
        ("image,label\nx,NORMAL\n", "expected a header with label and one of sha256, path, study"),
        (b"\xff\xd8\xff\xe0 a JPEG, not a CSV", "not a UTF-8 CSV file"),
    ):
        reads.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert main(["review", "--csv", str(reads), *db]) == 2
        err = capsys.readouterr().err
        assert says in err and "Doe" not in err and uid not in err
    assert len(audit.rows()) == before  # nothing recorded from a file with a bad row
    assert main(["review", "--csv", str(reads), "--label", "NORMAL", *db]) == 2
    assert "--csv holds the reads" in capsys.readouterr().err
    assert main(["review", "--sha256", _h(1), *db]) == 2 and "--label" in capsys.readouterr().err


def test_the_agreement_benchmark_degrades_the_calls_it_is_told_to():
    """benchmarks/agreement.py's months: a model that calls every film right does not alert; one
    simulated down to 80% sensitivity falls credibly below a floor of 90% over 1,000 reviewed films,
    and one at 75% specificity below a floor of 85%."""
    import numpy as np

    from conftest import load_benchmark

    bench = load_benchmark("agreement")
    y = np.array([1] * 300 + [0] * 100)
    floors = {"sensitivity": 0.9, "specificity": 0.85}
    rng = np.random.default_rng(0)
    alert, width = bench.simulate(y, y.astype(bool), 200, 0.25, None, None, floors, rng)
    assert not alert and 0 < width < 0.2
    assert bench.simulate(y, y.astype(bool), 1000, 0.25, 0.80, None, floors, rng)[0]
    assert bench.simulate(y, y.astype(bool), 1000, 0.25, None, 0.75, floors, rng)[0]


def test_agreement_per_device(audit, capsys):
    """--by device: a row per DICOM device the reviewed films came from (and one for films that were
    not DICOM), each with its own floor: the device whose pneumonias the model misses is named."""
    for i in range(12):  # ACME's pneumonias: the model misses all of them
        audit.record(
            "listen", _h(i), MODEL, {"label": "NORMAL", "probability": 0.1, "threshold": 0.5}, device="ACME DX-1"
        )
        audit.review("PNEUMONIA", input_sha256=_h(i))
    for i in range(12, 24):  # the other device's: all called
        audit.record(
            "listen", _h(i), MODEL, {"label": "PNEUMONIA", "probability": 0.9, "threshold": 0.5}, device="OTHER X"
        )
        audit.review("PNEUMONIA", input_sha256=_h(i))
    rows = {r["device"]: r for r in agreement_in(audit).table(by="device")}
    assert set(rows) == {"ACME DX-1", "OTHER X", "all devices"}
    assert (rows["ACME DX-1"]["sensitivity"]["k"], rows["OTHER X"]["sensitivity"]["k"]) == (0, 12)
    assert main(["audit", "--db", audit.url, "--agreement", "--by", "device", "--min-sensitivity", "0.9"]) == 1
    out = capsys.readouterr().out
    assert "| device | reviewed |" in out and "BELOW FLOOR: sensitivity of device ACME DX-1" in out
    assert "device OTHER X" not in out.split("BELOW FLOOR", 1)[1]
