"""Clinical integration: the audit trail, the watch folder and the DICOM node, with real peers."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage

from conftest import PATIENT_ID, PATIENT_NAME, free_port, make_certificates, make_dicom, real_images
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.explain.outlines import map_outlines
from pneumolens.integration.dicom_presentation import read_presentation_state
from pneumolens.integration.dicom_report import read_structured_report
from pneumolens.integration.dicom_segmentation import read_segmentation
from pneumolens.monitoring.audit import AuditLog, parse_since
from pneumolens.service.app import create_app
from pneumolens.service.settings import Settings


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'audit.sqlite'}"


def test_serve_records_every_prediction_and_shows_recent(trained_run, db, capsys):
    image = real_images("test", "PNEUMONIA", 1)[0].read_bytes()
    with TestClient(create_app(Settings(model=str(trained_run), audit_url=db))) as client:
        ok = client.post("/api/v1/predict", files={"file": ("x.jpeg", image)}, params={"explain": "false"})
        bad = client.post("/api/v1/predict", files={"file": ("y.jpeg", b"not an image")})
        recent = client.get("/api/v1/recent").json()
        page = client.get("/recent").text
    assert ok.status_code == 200 and bad.status_code == 400
    assert [r["decision"] for r in recent] == ["refused", ok.json()["label"]]  # newest first
    row = recent[1]
    assert row["source"] == "serve" and row["probability"] == pytest.approx(ok.json()["probability"])
    assert row["model_sha256"] == ok.json()["model"]["sha256"] and json.loads(row["preprocessing"])["image_size"] == 32
    assert row["input_sha256"] == __import__("hashlib").sha256(image).hexdigest() and row["duration_ms"] > 0
    assert recent[0]["error"].startswith("not a JPEG") and "Recent results" in page and "not a diagnosis" in page
    measures = ok.json()["measures"]  # the film's measures behind the flags, kept in the trail too
    assert set(measures) == {"lung_area", "lung_median", "noise", "detail"} and json.loads(row["measures"]) == measures
    assert recent[0]["measures"] is None

    assert main(["audit", "--db", db, "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id,time,source") and len(lines) == 3
    assert main(["audit", "--db", db, "--since", "1h"]) == 0 and "serve" in capsys.readouterr().out
    assert main(["audit", "--db", db, "--since", "2999-01-01"]) == 0 and "serve" not in capsys.readouterr().out
    assert main(["audit", "--db", db, "--since", "yesterday"]) == 2

    # The trail is a hash chain: intact as written; an edited probability is found and named.
    assert main(["audit", "--db", db, "--verify"]) == 0 and "intact: 2 chained row(s)" in capsys.readouterr().out
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("update predictions set probability = 0.01 where id = 1"))
    assert main(["audit", "--db", db, "--verify"]) == 1
    assert "BROKEN: row 1 was altered" in capsys.readouterr().out


def _rows(audit: AuditLog, n: int, source: str = "serve") -> None:
    model = {"name": "m", "version": "0.1", "sha256": "ab" * 32, "preprocessing": {"image_size": 128}}
    for i in range(n):
        result = {"probability": (i + 0.5) / (n + 1), "threshold": 0.364, "label": "NORMAL", "flags": []}
        audit.record(source, f"{i:064x}", model, result, duration_ms=12.5)


def test_audit_chain_finds_removed_rows_and_survives_a_prune(db, capsys):
    audit = AuditLog(db)
    _rows(audit, 6)
    assert audit.verify().problem is None and audit.verify().chained == 6
    with audit.engine.begin() as conn:  # a row taken out of the middle
        saved = dict(conn.execute(sa.text("select * from predictions where id = 3")).mappings().one())
        conn.execute(sa.text("delete from predictions where id = 3"))
    assert audit.verify().problem == "row 4 does not link to the row before it (rows were removed)"
    with audit.engine.begin() as conn:  # put back exactly as it was: intact again
        conn.execute(
            sa.text(f"insert into predictions ({', '.join(saved)}) values ({', '.join(':' + k for k in saved)})"), saved
        )
    assert audit.verify().problem is None
    with audit.engine.begin() as conn:  # the newest row removed: nothing after it to notice, but the head does
        conn.execute(sa.text("delete from predictions where id = 6"))
    assert "newest row(s) were removed" in audit.verify().problem
    assert main(["audit", "--db", db, "--verify"]) == 1 and "BROKEN" in capsys.readouterr().out
    with audit.engine.begin() as conn:  # ...unless the head record goes too: then it is rebuilt, on record
        conn.execute(sa.text("delete from audit_chain"))
    audit = AuditLog(db)
    _rows(audit, 1)  # the trail keeps working
    assert "was rebuilt here" in audit.verify().problem and audit.rows()[-2]["decision"] == "rebuilt"

    fresh = f"{db[:-7]}2.sqlite"
    audit = AuditLog(fresh)
    _rows(audit, 5)
    with audit.engine.begin() as conn:  # the first three rows are a year old
        conn.execute(sa.text("update predictions set time = '2025-01-01T00:00:00.000+00:00' where id <= 3"))
    assert audit.verify().problem == "row 1 was altered (its content does not match its hash)"  # the time is hashed
    audit = AuditLog(fresh)
    with audit.engine.begin() as conn:
        conn.execute(sa.text("delete from predictions"))
        conn.execute(sa.text("update audit_chain set head = anchor"))
    _rows(audit, 5)
    assert main(["audit", "--db", fresh, "--prune-before", "2999-01-01"]) == 0
    assert "removed 5 row(s)" in capsys.readouterr().out
    rows = audit.rows()
    assert [r["decision"] for r in rows] == ["pruned"] and rows[0]["source"] == "audit"
    assert "5 row(s) dated before 2999-01-01" in rows[0]["error"]
    _rows(audit, 2)
    assert audit.verify().problem is None and audit.verify().chained == 3  # the prune row and the two after it
    assert main(["audit", "--db", fresh, "--prune-before", "last tuesday"]) == 2
    assert "--prune-before 'last tuesday'" in capsys.readouterr().err
    assert main(["audit", "--db", fresh, "--prune-before", "1d"]) == 0 and "removed 0 row(s)" in capsys.readouterr().out


def test_audit_chain_with_several_writer_processes(db):
    AuditLog(db)
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_clinical import _rows\n"
        f"from pneumolens.monitoring.audit import AuditLog; _rows(AuditLog({db!r}), 40, sys.argv[1])"
    )
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, src], cwd=root) for src in ("serve", "watch", "listen")]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    report = AuditLog(db).verify()
    assert report.problem is None and report.chained == 120  # three processes appending at once: one chain


def test_audit_trail_from_an_older_pneumolens_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the table as pneumolens wrote it before the hash chain, with two rows
        conn.execute(
            sa.text(
                "create table predictions (id integer primary key, time varchar(32) not null, source varchar(16) "
                "not null, input_sha256 varchar(64) not null, study_hash varchar(64), model_name varchar(128), "
                "model_version varchar(32), model_sha256 varchar(64), preprocessing text, probability float, "
                "threshold float, decision varchar(16), flags text, error text, duration_ms float)"
            )
        )
        for i in range(2):
            conn.execute(
                sa.text(
                    "insert into predictions (time, source, input_sha256, decision) values (:t, 'serve', :h, 'NORMAL')"
                ),
                {"t": f"2026-11-0{i + 1}T00:00:00.000+00:00", "h": f"{i:064x}"},
            )
    audit = AuditLog(f"sqlite:///{path}")
    _rows(audit, 3)
    report = audit.verify()
    assert (report.problem, report.chained, report.unchained) == (None, 3, 2)
    assert "2 older row(s) from before the chain, not verifiable" in str(report)
    assert len(audit.rows()) == 5


def test_a_chain_from_before_the_measures_column_verifies_and_grows(tmp_path):
    """Rows chained before the film's measures were kept still verify once the column is added; new rows
    carry the measures under their hash, and an edit of them, or measures added to an old row, is caught."""
    db = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    _rows(AuditLog(db), 3)
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("alter table predictions drop column measures"))  # as written before 2026-12-06
    audit = AuditLog(db)
    assert audit.verify().problem is None and audit.verify().chained == 3
    model = {"name": "m", "version": "0.1", "sha256": "ab" * 32, "preprocessing": {"image_size": 128}}
    result = {"probability": 0.7, "threshold": 0.4, "label": "PNEUMONIA", "flags": [], "measures": {"noise": 0.002}}
    audit.record("serve", "f" * 64, model, result)
    assert (audit.verify().problem, audit.verify().chained) == (None, 4)
    assert json.loads(audit.rows()[-1]["measures"]) == {"noise": 0.002}
    for row, text in ((4, '{"noise": 0.02}'), (2, '{"noise": 0.002}')):
        with engine.begin() as conn:
            conn.execute(sa.text("update predictions set measures = :m where id = :i"), {"m": text, "i": row})
        assert audit.verify().problem == f"row {row} was altered (its content does not match its hash)"


def _forge(audit: AuditLog, key: bytes) -> None:
    """Edit row 2's probability and sign it again with ``key``, relinking every row after it."""
    import hashlib
    import hmac

    from pneumolens.monitoring.audit import hashed_content

    with audit.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(sa.text("select * from predictions order by id")).mappings()]
        rows[1]["probability"] = 0.99
        prev = rows[0]["row_hash"]
        for r in rows[1:]:
            body = hashed_content(r)
            r["prev_hash"], r["row_hash"] = prev, hmac.new(key, (prev + body).encode(), hashlib.sha256).hexdigest()
            conn.execute(
                sa.text("update predictions set probability = :p, prev_hash = :a, row_hash = :h where id = :i"),
                {"p": r["probability"], "a": r["prev_hash"], "h": r["row_hash"], "i": r["id"]},
            )
            prev = r["row_hash"]
        conn.execute(sa.text("update audit_chain set head = :h"), {"h": prev})


def test_audit_chain_is_keyed_apart_from_the_salt(tmp_path, monkeypatch):
    """Whoever holds the salt (to match study hashes) cannot rewrite the chain; the key can. A trail
    chained with its salt by an older pneumolens still verifies and goes on with it; the key may
    come from the environment."""
    monkeypatch.delenv("PNEUMOLENS_AUDIT_KEY", raising=False)
    monkeypatch.delenv("PNEUMOLENS_AUDIT_SALT", raising=False)
    db = f"sqlite:///{tmp_path / 'a' / 'audit.sqlite'}"
    audit = AuditLog(db)
    _rows(audit, 4)
    audit.salt()  # made when the first study hash is
    key_file, salt_file = tmp_path / "a" / "audit.key", tmp_path / "a" / "audit.salt"
    assert key_file.stat().st_mode & 0o777 == 0o600 and salt_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text() != salt_file.read_text() and not audit.keyed_with_salt
    _forge(audit, salt_file.read_text().strip().encode())
    assert audit.verify().problem == "row 2 was altered (its content does not match its hash)"
    _forge(audit, key_file.read_text().strip().encode())
    assert audit.verify().problem is None  # the key is what a forger needs: keep it apart from the database

    old = f"sqlite:///{tmp_path / 'b' / 'audit.sqlite'}"  # chained with the salt, as before 2026-12-06
    audit = AuditLog(old)
    audit._key = audit.salt()
    _rows(audit, 3)
    (tmp_path / "b" / "audit.key").unlink()
    audit = AuditLog(old)
    assert audit.keyed_with_salt and not (tmp_path / "b" / "audit.key").exists()
    _rows(audit, 2)
    assert (audit.verify().problem, audit.verify().chained) == (None, 5)

    monkeypatch.setenv("PNEUMOLENS_AUDIT_KEY", "a key from the environment")
    env = f"sqlite:///{tmp_path / 'c' / 'audit.sqlite'}"
    _rows(AuditLog(env), 3)
    assert AuditLog(env).verify().problem is None and not (tmp_path / "c" / "audit.key").exists()
    monkeypatch.setenv("PNEUMOLENS_AUDIT_KEY", "another key")
    assert AuditLog(env).verify().problem == "row 1 was altered (its content does not match its hash)"


def test_since_parsing():
    assert (time.time() - parse_since("2h").timestamp()) == pytest.approx(7200, abs=5)
    assert parse_since("2026-11-27").isoformat() == "2026-11-27T00:00:00+00:00"


# ------------------------------------------------------------------------------------------ watch


def _watch(folder: Path, out: Path, db: str, model: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pneumolens", "watch", str(folder), "--out", str(out), "--db", db]
    cmd += ["--poll", "0.2", "--model", str(model)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_watch_folder_survives_a_kill_mid_burst(trained_run, tmp_path, db):
    folder, out = tmp_path / "incoming", tmp_path / "results"
    folder.mkdir()
    images = real_images("test", "NORMAL", 50)
    assert len({f.read_bytes() for f in images}) == 50
    first = _watch(folder, out, db, trained_run)
    try:
        _wait_for(out.is_dir, 60, first)  # the watcher is up (it makes its output folder first)
        for i, f in enumerate(images):  # the burst: 50 files, the watcher already running
            shutil.copyfile(f, folder / f"{i:02d}_{f.name}")
        _wait_for(lambda: len(list(out.glob("*.json"))) >= 10, 120, first)
    finally:
        first.send_signal(signal.SIGKILL)  # no clean shutdown at all
        first.wait(30)
    done_before = len(list(out.glob("*.json")))
    assert done_before < 50, "the kill came too late to test a restart"
    second = _watch(folder, out, db, trained_run)
    try:
        _wait_for(lambda: len(list(out.glob("*.json"))) == 50, 180, second)
        time.sleep(1.0)  # a few more polls: nothing may be processed twice
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    rows = [r for r in AuditLog(db).rows() if r["source"] == "watch"]
    hashes = [r["input_sha256"] for r in rows]
    assert len(rows) == 50 and len(set(hashes)) == 50  # each file exactly once
    assert AuditLog(db).verify().problem is None  # a SIGKILL mid-burst leaves the hash chain intact
    assert all(r["decision"] in ("NORMAL", "PNEUMONIA") for r in rows)
    result = json.loads(next(out.glob("00_*.json")).read_text())
    assert 0 <= result["probability"] <= 1 and "not a diagnosis" in result["notice"]


def test_watch_once_refuses_bad_files_and_skips_done_ones(trained_run, tmp_path, db, capsys, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(real_images("test", "PNEUMONIA", 1)[0], folder / "a.jpeg")
    shutil.copyfile(real_images("test", "NORMAL", 1)[0], folder / "Doe^Jane.bmp")  # another kind: counted, not named
    (folder / "b.jpeg").write_bytes(b"truncated \xff\xd8")
    knee = pydicom.dcmread(make_dicom(folder / "c.dcm", np.round(read_image(folder / "a.jpeg") * 255).astype(np.uint8)))
    knee.BodyPartExamined = "KNEE"  # a film the model is not for: not read, and said why
    knee.save_as(folder / "c.dcm")
    args = ["watch", str(folder), "--once", "--db", db, "--model", str(trained_run)]
    with caplog.at_level("WARNING", logger="pneumolens.integration.watch"):
        assert main(args) == 0 and "processed 3 new file(s)" in capsys.readouterr().err
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert said == [
        "watch: 1 file(s) in the folder are not JPEG, PNG, TIFF or DICOM by their name or DICOM mark and are not "
        "read (their names are not logged)"
    ]
    assert not (folder / "pneumolens-results" / "Doe^Jane.bmp.json").exists() and "Doe" not in caplog.text
    assert main(args) == 0 and "processed 0 new file(s)" in capsys.readouterr().err
    refused = json.loads((folder / "pneumolens-results" / "b.jpeg.json").read_text())
    assert "not a JPEG, PNG, TIFF or DICOM" in refused["error"]
    skipped = json.loads((folder / "pneumolens-results" / "c.dcm.json").read_text())
    assert skipped["error"].startswith("out of scope: not a chest film (Body Part Examined KNEE)")
    assert "probability" not in skipped
    decisions = [r["decision"] for r in AuditLog(db).rows()]
    assert len(decisions) == 3 and decisions.count("refused") == 2


# ------------------------------------------------------------------------------------------ listen


def _pynetdicom(app: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pynetdicom", app, *args], capture_output=True, text=True, timeout=120)


BAD_BIRTH_DATE = "19X01231"


@pytest.fixture
def study(tmp_path):
    """Three DX files of one study (8-bit MONOCHROME2, corrupt, 16-bit MONOCHROME1 in lossless JPEG, the
    compression CR and DX modalities use) made from real images, with a patient name and id that must not leak,
    and a malformed birth date, which pydicom would quote in its log."""
    d = tmp_path / "sent"
    d.mkdir()
    a, b = (read_image(p) for p in real_images("test", "PNEUMONIA", 2))
    files = [
        make_dicom(d / "1.dcm", np.round(a * 255).astype(np.uint8)),
        make_dicom(d / "2.dcm", np.round(b * 255).astype(np.uint8)),
        make_dicom(d / "3.dcm", np.round((1 - b) * 4095).astype(np.uint16), "MONOCHROME1", syntax="jpeg-lossless"),
    ]
    broken = pydicom.dcmread(files[1])
    broken.PixelData = broken.PixelData[:1000]  # the header promises far more pixels
    broken.save_as(files[1])
    uid = pydicom.dcmread(files[0]).StudyInstanceUID
    for f in files:  # one study, from one detector
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = uid
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "DX-1"
        ds.PatientBirthDate = BAD_BIRTH_DATE
        ds.save_as(f)
    return files, uid


def test_dicom_node_with_real_peers(trained_run, tmp_path, db, study):
    files, study_uid = study
    lateral = pydicom.dcmread(files[0])  # the study's lateral view: acknowledged, not read
    lateral.SOPInstanceUID = lateral.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    lateral.ViewPosition = "LL"
    lateral.save_as(tmp_path / "lateral.dcm")
    port, out = free_port(), tmp_path / "results"
    cmd = [sys.executable, "-m", "pneumolens", "listen", "--port", str(port), "--out", str(out), "--db", db]
    cmd += ["--sr", "--gsps", "--seg", "--notice-not-read"]
    node = subprocess.Popen([*cmd, "--model", str(trained_run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(
            lambda: _pynetdicom("echoscu", "127.0.0.1", str(port), "-aec", "PNEUMOLENS").returncode == 0, 90, node
        )
        # -cx: propose each file's own transfer syntax, as a modality does (the third is lossless JPEG)
        sent = _pynetdicom(
            "storescu",
            "127.0.0.1",
            str(port),
            *map(str, files),
            str(tmp_path / "lateral.dcm"),
            "-aec",
            "PNEUMOLENS",
            "-v",
            "-cx",
        )
        assert "0xC000" in sent.stderr + sent.stdout  # the corrupt one was refused...
        # ...and the node went on: 2 pictures, 2 reports, 2 presentation states, 2 segmentations, and the
        # lateral's notice that it was not read
        _wait_for(lambda: len(list(out.glob("*.dcm"))) == 9, 60, node)
        assert node.poll() is None
        again = _pynetdicom("echoscu", "127.0.0.1", str(port), "-aec", "PNEUMOLENS")
        assert again.returncode == 0
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(30)
    log = node.stderr.read().decode()
    assert node.returncode == 0 and "stored 2 result(s), refused 1 image(s), skipped 1 out of scope" in log
    assert "not read: not a frontal view (View Position LL)" in log  # why the lateral got no result
    assert "listening as PNEUMOLENS" in log and "refused" in log  # the node logs what it does...
    for secret in (PATIENT_NAME, PATIENT_ID, "Testperson", BAD_BIRTH_DATE, study_uid):  # ...never who
        assert secret not in log
    originals = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    written = [pydicom.dcmread(f) for f in out.glob("*.dcm")]
    (notice,) = [ds for ds in written if ds.get("DerivationDescription", "").startswith("AI did not read")]
    assert notice.SourceImageSequence[0].ReferencedSOPInstanceUID == lateral.SOPInstanceUID
    assert "(View Position LL)" in notice.DerivationDescription and notice.StudyInstanceUID == study_uid
    written.remove(notice)
    reports = [ds for ds in written if ds.Modality == "SR"]
    captions = {}
    series = set()
    for sc in (ds for ds in written if ds.Modality == "OT"):
        captions[sc.SourceImageSequence[0].ReferencedSOPInstanceUID] = sc.DerivationDescription
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Modality == "OT"
        assert sc.StudyInstanceUID == study_uid and sc.SourceImageSequence[0].ReferencedSOPInstanceUID in originals
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3 and sc.BurnedInAnnotation == "YES"
        assert (
            "not a diagnosis" in sc.DerivationDescription and str(sc.PatientID) == PATIENT_ID
        )  # filed with its patient
        series.add(sc.SeriesInstanceUID)
    assert len(series) == 1 and not series & {pydicom.dcmread(f).SeriesInstanceUID for f in files}
    # the structured reports: one per picture, about the same image, saying what its caption says
    assert len(reports) == 2 and len({sr.SeriesInstanceUID for sr in reports}) == 1
    assert not {sr.SeriesInstanceUID for sr in reports} & series
    sent = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    for sr in reports:
        said = read_structured_report(sr)
        assert sr.StudyInstanceUID == study_uid and str(sr.PatientID) == PATIENT_ID
        assert sr.PatientBirthDate == ""  # left out, malformed, rather than failing the report
        assert said["verification"] == "UNVERIFIED" and "not a diagnosis" in sr.SeriesDescription
        (source,) = said["evidence"]
        left, top, right, bottom = said["read_box"]  # the part of the film the model read, on it
        assert 0 <= left < right <= sent[source].Columns and 0 <= top < bottom <= sent[source].Rows
        assert f"probability {said['probability']:.2f}," in captions[source]
        side = "above" if said["pneumonia"] == "Present" else "below"
        assert f"{side} operating point" in captions[source]
    # the presentation states: one per picture, on its original as that is shown, drawing the picture's
    # caption and the report's regions
    states = [ds for ds in written if ds.Modality == "PR"]
    assert len(states) == 2 and len({pr.SeriesInstanceUID for pr in states}) == 1
    assert not {pr.SeriesInstanceUID for pr in states} & (series | {sr.SeriesInstanceUID for sr in reports})
    regions = {read_structured_report(sr)["evidence"][0]: read_structured_report(sr)["regions"] for sr in reports}
    for pr in states:
        drawn = read_presentation_state(pr)
        original = sent[drawn["image"]]
        assert pr.StudyInstanceUID == study_uid and str(pr.PatientID) == PATIENT_ID and pr.PatientBirthDate == ""
        assert drawn["texts"] == [captions[drawn["image"]]] and drawn["layers"] == ["AI MAP", "AI CALL"]
        inverse = original.PhotometricInterpretation == "MONOCHROME1"
        assert drawn["presentation_lut"] == ("INVERSE" if inverse else "IDENTITY")
        assert 1 <= len(drawn["outlines"]) <= 3 and len(drawn["outlines"]) == len(regions[drawn["image"]])
        for outline, region in zip(drawn["outlines"], regions[drawn["image"]], strict=True):
            np.testing.assert_allclose(outline, region["points"], atol=1e-3)  # the same regions in both
            assert (outline[0] == outline[-1]).all() and (outline >= 0).all()  # closed, on the image
            assert (outline[:, 0] <= original.Columns).all() and (outline[:, 1] <= original.Rows).all()
    # the segmentations: one per picture, in a series of their own, graded where the outlines go round
    segs = [ds for ds in written if ds.Modality == "SEG"]
    assert len(segs) == 2 and len({seg.SeriesInstanceUID for seg in segs}) == 1
    assert not {seg.SeriesInstanceUID for seg in segs} & (series | {ds.SeriesInstanceUID for ds in reports + states})
    for seg in segs:
        read = read_segmentation(seg)
        assert seg.StudyInstanceUID == study_uid and str(seg.PatientID) == PATIENT_ID
        assert read["map"].shape == sent[read["image"]].pixel_array.shape and read["map"].max() == 1.0
        _assert_outline_is_half_peak(read["map"], regions[read["image"]][0]["points"])

    rows = AuditLog(db).rows()
    assert [r["decision"] for r in rows].count("refused") == 2 and len(rows) == 4
    assert sum((r["error"] or "").startswith("out of scope: not a frontal view") for r in rows) == 1
    assert len({r["study_hash"] for r in rows}) == 1 and rows[0]["study_hash"] != study_uid
    assert {r["device"] for r in rows} == {"ACME DX-1"}  # the refused file's too: a device's drift shows in both
    assert AuditLog(db).verify().chained == 4
    raw = Path(db.removeprefix("sqlite:///")).read_bytes()
    for secret in (PATIENT_NAME, PATIENT_ID, "Testperson", study_uid):
        assert secret.encode() not in raw
    engine = sa.create_engine(db)
    with engine.connect() as conn:  # and not in any column of any table
        tables = sa.inspect(engine).get_table_names()
        rows_all = [list(r) for t in tables for r in conn.execute(sa.text(f"select * from {t}"))]
    text = json.dumps(rows_all, default=str)
    assert PATIENT_ID not in text and PATIENT_NAME not in text


def test_node_takes_the_big_endian_files_of_old_modalities(trained_run, tmp_path):
    """Explicit VR Big Endian is retired, and old modalities still send it: the node accepts it and
    reads the image as it reads the same pixels in little endian."""
    from pneumolens.integration.dicom_node import Node, caption_for
    from pneumolens.service.engine import Engine

    pixels = np.round(read_image(real_images("test", "PNEUMONIA", 1)[0]) * 4095).astype(np.uint16)
    big = make_dicom(tmp_path / "big.dcm", pixels, syntax="big-endian")
    port = free_port()
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out")
    server = node.server("127.0.0.1", port)
    try:  # -cx: propose the file's own transfer syntax only, as the old modality would
        sent = _pynetdicom("storescu", "127.0.0.1", str(port), str(big), "-aec", "PNEUMOLENS", "-cx")
        assert sent.returncode == 0 and node.stored == 1, sent.stderr
    finally:
        server.shutdown()
    (picture,) = (pydicom.dcmread(f) for f in node.out.glob("*.dcm"))
    little = read_image(make_dicom(tmp_path / "little.dcm", pixels))
    assert picture.DerivationDescription == caption_for(node.engine.analyse(little, explain=False))


def test_node_benchmark_sends_real_films_and_counts_what_the_node_wrote(trained_run, tmp_path, monkeypatch, capsys):
    """benchmarks/node.py on two real films: its DICOM files hold the JPEGs' grey levels (12 bits), and
    its table has a row per output set, each timing both films and counting what was written, the last
    two also sending both results on to a FHIR server and an MLLP listener, and taking both films over
    DICOMweb and storing both pictures on in a PACS."""
    from conftest import load_benchmark

    script = load_benchmark("node")
    films = tmp_path / "films"
    films.mkdir()
    for f in real_images("test", "NORMAL", 2):
        (films / f.name).symlink_to(f)
    ds = script.as_dicom(sorted(films.iterdir())[0])
    expected = np.asarray(Image.open(sorted(films.iterdir())[0]).convert("L"), dtype=np.float64) / 255
    assert ds.BitsStored == 12 and np.abs(ds.pixel_array / 4095 - expected).max() <= 0.5 / 4095
    monkeypatch.setattr("sys.argv", ["node.py", "--images", str(films), "--model", str(trained_run)])
    script.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| picture")]
    assert len(rows) == 6 and all(row.split(" | ")[1] == "2" for row in rows)
    kb = [float(row.strip(" |").split(" | ")[-1]) for row in rows]  # each output set writes more than the last
    assert kb[0] > 0 and kb[1] > kb[0] and kb[3] >= kb[2] >= kb[1] and kb[4] > kb[0]  # + the FHIR and HL7 files
    assert "from the modality's request to both receivers having the result, median" in out  # both got both films
    assert "from the sender's STOW-RS request to the PACS having the picture, median" in out  # the PACS got both


def test_node_stops_in_bounded_time_with_an_association_open(tmp_path):
    import threading

    from pynetdicom import AE

    from pneumolens.integration.dicom_node import VERIFICATION, Node

    node, stop, port = Node(None, None, tmp_path / "out"), threading.Event(), free_port()
    runner = threading.Thread(target=node.run, args=("127.0.0.1", port, stop, 1.0))
    runner.start()
    scu = AE(ae_title="IDLE")
    scu.add_requested_context(VERIFICATION)

    def echo() -> bool:
        assoc = scu.associate("127.0.0.1", port, ae_title="PNEUMOLENS")
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release() if assoc.is_established else None
        return ok

    _wait_for(echo, 30)
    held = scu.associate("127.0.0.1", port, ae_title="PNEUMOLENS")  # a peer that never releases
    assert held.is_established
    t0 = time.monotonic()
    stop.set()
    runner.join(15)
    assert not runner.is_alive() and time.monotonic() - t0 < 6  # 1 s drain, then the abort
    _wait_for(lambda: held.is_aborted or not held.is_alive(), 10)
    refused = scu.associate("127.0.0.1", port, ae_title="PNEUMOLENS")  # and nothing listens any more
    assert not refused.is_established


def test_node_tls_and_calling_ae_allow_list(tmp_path):
    import ssl
    import threading

    from pynetdicom import AE

    from pneumolens.integration.dicom_node import VERIFICATION, Node, tls_context

    pem = make_certificates(tmp_path)
    tls = tls_context(pem["server"], pem["server_key"], ca=pem["ca"])  # mutual TLS
    node, stop, port = (
        Node(None, None, tmp_path / "out", allowed_aets=("MODALITY",), tls=tls),
        threading.Event(),
        free_port(),
    )
    runner = threading.Thread(target=node.run, args=("127.0.0.1", port, stop, 1.0))
    runner.start()

    def client(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pem["ca"])
        if with_cert:
            ctx.load_cert_chain(pem["client"], pem["client_key"])
        return ctx

    def echo(calling: str, tls_ctx: ssl.SSLContext | None) -> str:
        scu = AE(ae_title=calling)
        scu.add_requested_context(VERIFICATION)
        scu.acse_timeout = scu.network_timeout = 5
        args = (tls_ctx, "127.0.0.1") if tls_ctx is not None else None
        assoc = scu.associate("127.0.0.1", port, ae_title="PNEUMOLENS", tls_args=args)
        if assoc.is_established:
            status = assoc.send_c_echo().Status
            assoc.release()
            return f"echo {status}"
        return "rejected" if assoc.is_rejected else "failed"

    try:
        _wait_for(lambda: echo("MODALITY", client(True)) == "echo 0", 30)
        assert echo("INTRUDER", client(True)) == "rejected" and node.rejected == 1  # not on the allow-list
        assert echo("MODALITY", None) == "failed"  # plain TCP to a TLS port
        assert echo("MODALITY", client(False)) == "failed"  # TLS without a client certificate
    finally:
        stop.set()
        runner.join(15)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tls-cert", "a.pem"], "--tls-cert and --tls-key together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "--tls-cert missing.pem: no such file"),
        (["--tls-cert", "SERVER", "--tls-key", "CLIENT_KEY"], "not a matching PEM certificate and key"),
        (["--tls-cert", "SERVER", "--tls-key", "SERVER_KEY", "--tls-ca", "SERVER_KEY"], "--tls-ca"),
        (["--allow-aet", "A_TITLE_LONGER_THAN_16"], "--allow-aet"),
        (["--fhir", "UNDER_A_FILE"], "cannot create the folder"),  # under a file: said before listening
        (["--keep", "UNDER_A_FILE"], "--keep"),
        (["--forward-tls", "--tls-cert", "SERVER", "--tls-key", "SERVER_KEY"], "--forward-tls needs --forward"),
        (["--forward", "A@h:1", "--forward-tls", "--tls-cert", "SERVER", "--tls-key", "SERVER_KEY"], "(or --tls-ca)"),
        (["--forward", "A@h:1", "--forward-tls"], "--forward-tls needs a client certificate and key"),
        (["--forward", "A@h:1", "--forward-tls-ca", "SERVER"], "--forward-tls-ca need --forward-tls"),
        (["--forward", "A@h:1", "--forward-tls", "--forward-tls-cert", "SERVER"], "needs a client certificate"),
        (
            ["--forward", "A@h:1", "--forward-tls", "--forward-tls-cert", "SERVER", "--forward-tls-key", "CLIENT_KEY"]
            + ["--forward-tls-ca", "SERVER"],
            "--forward-tls-cert",  # the files named by the flags they came with
        ),
    ],
)
def test_listen_refuses_bad_tls_and_allow_list_flags(tmp_path, capsys, flags, message):
    pem = make_certificates(tmp_path)
    names = {"SERVER": pem["server"], "SERVER_KEY": pem["server_key"], "CLIENT_KEY": pem["client_key"]}
    names["UNDER_A_FILE"] = pem["server"] + "/results"
    argv = ["listen", "--port", str(free_port()), "--out", str(tmp_path / "out"), *[names.get(f, f) for f in flags]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_listen_on_a_taken_port_says_so(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["listen", "--port", str(port), "--out", str(tmp_path / "out"), "--db", f"sqlite:///{tmp_path}/a.db"]
        before = signal.getsignal(signal.SIGINT)
        assert main(argv) == 2
        assert signal.getsignal(signal.SIGINT) is before  # the handlers it set are put back
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and "listening as" not in err


def test_forwarding_over_tls_with_the_destination_s_own_certificates(trained_run, tmp_path, study):
    """A node listening on plain TCP inside the hospital forwards over mutual TLS to an archive of
    another PKI, with the client certificate and CA given for the destination alone."""
    from pynetdicom import AE, evt

    from pneumolens.integration.dicom_node import SECONDARY_CAPTURE, tls_context

    (tmp_path / "other").mkdir()
    pki = make_certificates(tmp_path / "other")  # the archive's CA: the node's modalities know nothing of it
    received = []
    archive = AE(ae_title="ARCHIVE")
    archive.add_supported_context(SECONDARY_CAPTURE)
    port_archive, port_node = free_port(), free_port()
    server = archive.start_server(
        ("127.0.0.1", port_archive),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0x0000)],
        ssl_context=tls_context(pki["server"], pki["server_key"], ca=pki["ca"]),  # demands our client certificate
    )
    cmd = [sys.executable, "-m", "pneumolens", "listen", "--port", str(port_node), "--out", str(tmp_path / "out")]
    cmd += ["--db", f"sqlite:///{tmp_path / 'a.db'}", "--model", str(trained_run)]
    cmd += ["--forward", f"ARCHIVE@127.0.0.1:{port_archive}", "--forward-tls", "--forward-tls-cert", pki["client"]]
    cmd += ["--forward-tls-key", pki["client_key"], "--forward-tls-ca", pki["ca"]]
    node = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(
            lambda: _pynetdicom("echoscu", "127.0.0.1", str(port_node), "-aec", "PNEUMOLENS").returncode == 0, 90, node
        )
        sent = _pynetdicom("storescu", "127.0.0.1", str(port_node), str(study[0][0]), "-aec", "PNEUMOLENS")
        assert sent.returncode == 0, sent.stderr
        _wait_for(lambda: len(received) == 1, 30, node)
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(30)
        server.shutdown()
    assert received[0].StudyInstanceUID == study[1] and node.returncode == 0


@pytest.mark.parametrize("tls", [False, True])
def test_forwarding_to_another_node(trained_run, tmp_path, study, tls):
    from pynetdicom import AE, evt

    from pneumolens.integration.dicom_node import SECONDARY_CAPTURE, Destination, Node, tls_context
    from pneumolens.integration.dicom_presentation import GSPS
    from pneumolens.integration.dicom_report import COMPREHENSIVE_SR
    from pneumolens.integration.dicom_segmentation import SEGMENTATION
    from pneumolens.service.engine import Engine

    received = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    archive = AE(ae_title="ARCHIVE")
    archive.add_supported_context(SECONDARY_CAPTURE)
    archive.add_supported_context(COMPREHENSIVE_SR)
    archive.add_supported_context(GSPS)
    archive.add_supported_context(SEGMENTATION)  # uncompressed only: the node's RLE must be unpacked for it
    port_archive, port_node = free_port(), free_port()
    destination = Destination.parse(f"ARCHIVE@127.0.0.1:{port_archive}")
    archive_tls = None
    if tls:  # the archive demands a client certificate from our CA; the node checks the archive's
        pem = make_certificates(tmp_path)
        archive_tls = tls_context(pem["server"], pem["server_key"], ca=pem["ca"])
        destination.tls = tls_context(pem["client"], pem["client_key"], ca=pem["ca"], server=False)
    archive_server = archive.start_server(
        ("127.0.0.1", port_archive),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        ssl_context=archive_tls,
    )
    engine = Engine(Settings(model=str(trained_run)))
    node = Node(engine, None, tmp_path / "out", forward=destination, sr=True, gsps=True, seg=True)
    node_server = node.server("127.0.0.1", port_node)
    try:
        sent = _pynetdicom("storescu", "127.0.0.1", str(port_node), str(study[0][0]), "-aec", "PNEUMOLENS")
        assert sent.returncode == 0, sent.stderr
        _wait_for(lambda: len(received) == 4, 30)
    finally:
        node_server.shutdown()
        archive_server.shutdown()
    # the picture, the report, the presentation state and the segmentation, in one association
    assert {ds.StudyInstanceUID for ds in received} == {study[1]}
    assert [ds.SOPClassUID for ds in received] == [SECONDARY_CAPTURE, COMPREHENSIVE_SR, GSPS, SEGMENTATION]
    (written,) = (pydicom.dcmread(f) for f in (tmp_path / "out").glob("*.dcm") if pydicom.dcmread(f).Modality == "SEG")
    assert written.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    received[3].file_meta = pydicom.dataset.FileMetaDataset()
    received[3].file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # as the archive took it
    np.testing.assert_array_equal(read_segmentation(received[3])["map"], read_segmentation(written)["map"])
    with pytest.raises(ValueError, match="AE_TITLE@host:port"):
        Destination.parse("nowhere")


def test_secondary_capture_caption_and_pixels(trained_run):
    from pneumolens.integration.dicom_node import burn_in, caption_for

    caption = caption_for({"probability": 0.93, "threshold": 0.4, "flags": []})
    assert caption == "AI first read: probability 0.93, above operating point; not a diagnosis"
    both = caption_for({"probability": 0.93, "threshold": 0.4, "flags": ["lungs_cut_off", "grey_lungs"]})
    assert both == caption + " | check image: lungs_cut_off | caution: grey lungs, where false positives concentrate"
    unsure = caption_for({"probability": 0.5, "threshold": 0.4, "flags": ["borderline"]})
    assert unsure.endswith(" | caution: borderline, among the model's least sure calls") and "check image" not in unsure
    from PIL import Image

    rgb = burn_in(Image.new("RGB", (224, 224), "gray"), caption, "pneumolens-default")
    assert rgb.shape[1] == 512 and rgb.shape[0] > 512 and rgb.dtype == np.uint8
    band = rgb[512:]
    assert (band[..., 0] > 200).any() and (band[..., 2] < 50).any()  # yellow text on black
    longer = burn_in(Image.new("RGB", (224, 224), "gray"), both, "pneumolens-default")
    assert longer.shape[0] >= rgb.shape[0] + 2 * (14 + 8)  # a line at least per " | " part
    for picture in (rgb, longer):
        assert not (picture[512:, -6:, 0] > 200).any()  # no yellow text reaches the right edge: nothing cut off


@pytest.mark.parametrize(
    "module, function, flag, what",
    [
        ("dicom_report", "structured_report", "sr", "structured report"),
        ("dicom_presentation", "presentation_state", "gsps", "presentation state"),
        ("dicom_segmentation", "segmentation", "seg", "segmentation"),
    ],
)
def test_a_report_that_cannot_be_built_does_not_cost_the_picture(
    trained_run, tmp_path, monkeypatch, caplog, module, function, flag, what
):
    import importlib

    from pneumolens.integration.dicom_node import SUCCESS, Node
    from pneumolens.service.engine import Engine

    def broken(*args, **kwargs):
        raise ValueError("a header highdicom will not take")

    monkeypatch.setattr(importlib.import_module(f"pneumolens.integration.{module}"), function, broken)
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    ds = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", **{flag: True})
    node.out.mkdir()
    assert node.handle_store(SimpleNamespace(dataset=ds, file_meta=ds.file_meta)) == SUCCESS
    (written,) = (pydicom.dcmread(f) for f in node.out.glob("*.dcm"))
    assert written.Modality == "OT" and node.stored == 1
    assert f"no {what} for this image (ValueError)" in caplog.text


def test_an_image_without_a_study_gets_results_in_one_new_study(trained_run, tmp_path):
    from pneumolens.integration.dicom_node import SUCCESS, Node
    from pneumolens.integration.dicom_report import read_structured_report
    from pneumolens.service.engine import Engine

    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    ds = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    del ds.StudyInstanceUID  # type 1, yet a sender may leave it out
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", sr=True)
    node.out.mkdir()
    assert node.handle_store(SimpleNamespace(dataset=ds, file_meta=ds.file_meta)) == SUCCESS
    picture, report = sorted((pydicom.dcmread(f) for f in node.out.glob("*.dcm")), key=lambda d: d.Modality)
    assert (picture.Modality, report.Modality) == ("OT", "SR")
    assert picture.StudyInstanceUID == report.StudyInstanceUID  # one study for both, named in each
    assert read_structured_report(report)["evidence"] == [ds.SOPInstanceUID]


def _assert_outline_is_half_peak(graded: np.ndarray, outline: np.ndarray) -> None:
    """The segmentation's values reach half its peak inside the outline the report and presentation
    state draw, and fall below it outside: the outline is its 0.5 contour."""
    from skimage.draw import polygon2mask

    inside = polygon2mask(graded.shape, outline[:, ::-1])  # (row, column)
    ring = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(inside, iterations=2)
    core = ndimage.binary_erosion(inside, iterations=2)
    assert core.any() and graded[core].mean() >= 0.5 and np.mean(graded[ring] < 0.5) > 0.9


def test_explain_writes_the_node_s_objects_for_a_dicom_file(trained_run, tmp_path, capsys):
    """explain IMAGE.dcm --dicom-out DIR: the picture, the report, the presentation state and the
    segmentation the node would send back, without a node; a JPEG is refused by name."""
    pixels = np.round((1 - read_image(real_images("test", "PNEUMONIA", 1)[0])) * 4095).astype(np.uint16)
    path = make_dicom(tmp_path / "x.dcm", pixels, "MONOCHROME1")
    adult = pydicom.dcmread(path)
    adult.PatientAge = "045Y"  # the node's caution from the header, which --dicom-out must give too
    adult.save_as(path, enforce_file_format=True)
    model = ["--model", str(trained_run)]
    assert main(["explain", str(path), *model, "--dicom-out", str(tmp_path / "out")]) == 0
    written = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    made = {ds.Modality: ds for ds in map(pydicom.dcmread, written)}
    original = pydicom.dcmread(path)
    assert set(made) == {"OT", "SR", "PR", "SEG"} and len(written) == 4
    assert {ds.StudyInstanceUID for ds in made.values()} == {original.StudyInstanceUID}
    said, drawn = read_structured_report(made["SR"]), read_presentation_state(made["PR"])
    assert said["evidence"] == [original.SOPInstanceUID] and drawn["image"] == original.SOPInstanceUID
    assert drawn["texts"] == [made["OT"].DerivationDescription] and drawn["presentation_lut"] == "INVERSE"
    assert "check image: older_than_training" in made["OT"].DerivationDescription  # the header's age, as the node
    for outline, region in zip(drawn["outlines"], said["regions"], strict=True):
        np.testing.assert_allclose(outline, region["points"], atol=1e-3)
    graded = read_segmentation(made["SEG"])
    assert graded["image"] == original.SOPInstanceUID and graded["map"].shape == pixels.shape
    _assert_outline_is_half_peak(graded["map"], said["regions"][0]["points"])
    jpeg = str(real_images("test", "NORMAL", 1)[0])
    assert main(["explain", jpeg, *model, "--dicom-out", str(tmp_path / "o2")]) == 2
    assert "--dicom-out needs a DICOM file" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_kept_originals_make_a_site_s_own_test_set(trained_run, tmp_path, capsys):
    """listen --keep stores each image it reads as received, named by its SOP Instance UID; with a
    manifest of the radiologists' labels they are a test set ``evaluate`` reads (docs/site-validation.md)."""
    from pneumolens.integration.dicom_node import SUCCESS, Node, uid_file_name
    from pneumolens.service.engine import Engine

    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", keep=tmp_path / "originals")
    node.out.mkdir()
    node.keep.mkdir()
    rows = ["path,label"]
    for label in ("NORMAL", "PNEUMONIA"):
        for i, f in enumerate(real_images("test", label, 2)):
            pixels = np.round(read_image(f) * 4095).astype(np.uint16)
            sent = pydicom.dcmread(make_dicom(tmp_path / f"{label}{i}.dcm", pixels, patient_id=f"P-{label}-{i}"))
            assert node.handle_store(SimpleNamespace(dataset=sent, file_meta=sent.file_meta)) == SUCCESS
            kept = pydicom.dcmread(node.keep / f"{sent.SOPInstanceUID}.dcm")
            assert kept.SOPInstanceUID == sent.SOPInstanceUID and np.array_equal(kept.pixel_array, pixels)
            rows.append(f"originals/{sent.SOPInstanceUID}.dcm,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "site.json"
    assert (
        main(["evaluate", "--model", str(trained_run), "--data", str(tmp_path / "labels.csv"), "--json", str(out)]) == 0
    )
    m = json.loads(out.read_text())
    assert m["n"] == 4 and m["n_patients"] == 4 and m["films_of_unknown_patient"] == 0  # patients from the headers
    assert uid_file_name("1.2.840.10008.1") == "1.2.840.10008.1"
    for odd in ("../../etc/passwd", ".", "1.2/3", "x" * 80):  # a sender's malformed UID never names a path
        assert uid_file_name(odd).startswith("uid-") and "/" not in uid_file_name(odd)


def test_retention_deletes_the_node_s_old_files_and_nothing_else(trained_run, tmp_path, monkeypatch, caplog):
    """listen --retain-days: at start, results and kept originals older than the limit go; newer
    ones, files the node did not name, and a result written while it runs stay; the log counts, and
    names nothing. A retention pass that fails costs a warning, not the node."""
    import os
    import threading

    import pneumolens.integration.dicom_node
    from pneumolens.integration.dicom_node import SUCCESS, Node
    from pneumolens.service.engine import Engine

    out, keep = tmp_path / "out", tmp_path / "originals"
    old, recent = time.time() - 8 * 86400, time.time() - 6 * 86400
    names = {
        out: ["1.2.826.0.1.11.dcm", "1.2.826.0.1.12.dcm", "notes.txt", "scan.dcm", ".1.2.3.dcm.x1.tmp"],
        keep: ["1.2.826.0.1.13.dcm", "uid-" + "0f" * 16 + ".dcm", "PATIENT.dcm"],
    }
    for folder, files in names.items():
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"x")
            os.utime(folder / name, (old, old))
    os.utime(out / "1.2.826.0.1.12.dcm", (recent, recent))  # within the limit
    (out / "9.9.dcm").mkdir()  # a folder, however named, is not the node's file
    os.utime(out / "9.9.dcm", (old, old))
    node = Node(Engine(Settings(model=str(trained_run))), None, out, keep=keep, retain_days=7)
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    stop = threading.Event()

    def store_then_stop() -> None:
        assert node.handle_store(SimpleNamespace(dataset=sent, file_meta=sent.file_meta)) == SUCCESS
        stop.set()

    with caplog.at_level("INFO"):
        node.run("127.0.0.1", free_port(), stop, on_ready=store_then_stop)
    left = {folder: sorted(p.name for p in folder.iterdir()) for folder in (out, keep)}
    written = next(p.name for p in out.iterdir() if p.name not in names[out] + ["9.9.dcm"])
    assert left[out] == sorted([".1.2.3.dcm.x1.tmp", "1.2.826.0.1.12.dcm", "9.9.dcm", "notes.txt", "scan.dcm", written])
    assert left[keep] == sorted(["PATIENT.dcm", f"{sent.SOPInstanceUID}.dcm"])
    assert "retention: deleted 3 file(s) older than 7 day(s)" in caplog.text and "1.2.826.0.1.11" not in caplog.text

    def failing(folder, before):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(pneumolens.integration.dicom_node, "prune_node_files", failing)
    stop.clear()
    with caplog.at_level("INFO"):
        node.run("127.0.0.1", free_port(), stop, on_ready=stop.set)  # serves, and stops when told
    assert "retention pass failed (Permission denied)" in caplog.text and str(out) not in caplog.text
    with pytest.raises(SystemExit):
        main(["listen", "--retain-days", "0"])


def test_a_failed_result_is_logged_without_the_header_value_it_quotes(trained_run, tmp_path, monkeypatch, caplog):
    import pneumolens.integration.dicom_node
    from pneumolens.integration.dicom_node import OUT_OF_RESOURCES, Node
    from pneumolens.service.engine import Engine

    def choking(*args, **kwargs):
        raise ValueError(f"Invalid value for VR DA: '{BAD_BIRTH_DATE}'")  # as pydicom words it

    monkeypatch.setattr(pneumolens.integration.dicom_node, "secondary_capture", choking)
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    ds = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out")
    node.out.mkdir()
    with caplog.at_level("INFO"):
        assert node.handle_store(SimpleNamespace(dataset=ds, file_meta=ds.file_meta)) == OUT_OF_RESOURCES
    assert "could not write or forward the result (ValueError" in caplog.text and BAD_BIRTH_DATE not in caplog.text
    assert not list(node.out.iterdir()) and node.stored == 0


@pytest.mark.parametrize(
    "charset, name",
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Ωμέγα^Άλφα"), (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")],
)
def test_results_keep_a_patient_name_in_any_character_set(tmp_path, charset, name):
    """The picture and the report are filed by the patient's name as the modality wrote it: the
    character set travels (the picture kept the name's bytes but not their set until 2026-12-06, so a
    Greek or Japanese name came out as question marks); the report writes names as UTF-8."""
    from pneumolens.integration.dicom_node import secondary_capture
    from pneumolens.integration.dicom_report import structured_report

    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    path = make_dicom(tmp_path / "x.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet, ds.PatientName = charset, name
    ds.save_as(path)
    original = pydicom.dcmread(path)
    result = {"probability": 0.7, "threshold": 0.4, "flags": [], "model": {"name": "m", "version": "1", "sha256": "ab"}}
    made = {
        "picture": secondary_capture(original, np.zeros((8, 8, 3), np.uint8), pydicom.uid.generate_uid(), "x"),
        "report": structured_report(original, result, pydicom.uid.generate_uid()),
    }
    for kind, ds in made.items():
        ds.save_as(tmp_path / f"{kind}.dcm", enforce_file_format=True)
        assert str(pydicom.dcmread(tmp_path / f"{kind}.dcm").PatientName) == name, kind


def test_structured_report_says_what_the_model_said(tmp_path):
    """The report's content, read back from the file: the call at the operating point (a probability
    equal to it is a pneumonia call, as everywhere in pneumolens), the probability, the check flags
    and the caution, the algorithm and its operating point, the original as evidence, the part of the
    film the model read (the whole image when the result names none); unverified. Every measurement
    group has an image region on the original: OHIF stops on one without."""
    import highdicom as hd

    from pneumolens.integration.dicom_report import COMPREHENSIVE_SR, structured_report

    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    original = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))  # no birth date, sex or study date
    model = {"name": "pneumolens-default", "version": "9.9", "sha256": "0123456789abcdef" * 4}
    cases = [(0.4, [], "Present", []), (0.39999, ["lungs_cut_off", "grey_lungs"], "Absent", ["lungs_cut_off"])]
    cases.append((0.9, ["unusual_lung_area"], "Present", ["unusual_lung_area"]))  # a code past 16 characters
    cases.append((0.45, ["borderline", "grey_lungs"], "Present", []))  # two cautions, no check
    heatmap = np.full(pixels.shape, -0.1, np.float32)
    heatmap[40:80, 100:160] = 1.0  # one region the map marks
    for probability, flags, call, checks in cases:
        result = {"probability": probability, "threshold": 0.4, "flags": flags, "model": model}
        if call == "Present":
            result.update(method="occlusion", explanation=SimpleNamespace(outlines=map_outlines(heatmap)))
            result["read_box"] = [30, 20, 200, 180]
        path = tmp_path / f"{call}.dcm"
        structured_report(original, result, pydicom.uid.generate_uid()).save_as(path, enforce_file_format=True)
        sr = pydicom.dcmread(path)
        said = read_structured_report(sr)
        assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.StudyInstanceUID == original.StudyInstanceUID
        assert said["pneumonia"] == call and said["probability"] == pytest.approx(probability, abs=1e-6)
        assert said["flags"] == checks + [f for f in ("grey_lungs", "borderline") if f in flags]
        assert said["algorithm"] == {
            "name": "pneumolens-default",
            "version": "9.9 sha256:0123456789ab",
            "parameters": ["operating point 0.4000"],
        }
        assert said["evidence"] == [original.SOPInstanceUID]
        assert (said["verification"], said["completion"]) == ("UNVERIFIED", "PARTIAL")
        height, width = pixels.shape
        assert said["read_box"] == ([30, 20, 200, 180] if call == "Present" else [0, 0, width, height])
        parsed = hd.sr.srread(path)  # a TID 1500 report highdicom itself can read back
        assert parsed.content.get_image_measurement_groups() == []
        first, *rois = parsed.content.get_planar_roi_measurement_groups()
        assert first.finding_type.value == "233604007" and first.reference_type.value == "111030"
        if call == "Present":  # the map's region, as an outline on the original (column, row)
            ((region,),) = [said["regions"]]
            assert region["share"] == pytest.approx(1.0)
            assert region["points"].min(axis=0) == pytest.approx([100, 40], abs=1)
            assert region["points"].max(axis=0) == pytest.approx([160, 80], abs=1)
            (roi,) = rois
            assert roi.finding_type.meaning == "AI map region" and roi.reference_type.value == "111030"
        else:
            assert said["regions"] == [] and rois == []
        (measurements,) = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
        for group in measurements.ContentSequence:  # each with a SCOORD selected from the original
            (scoord,) = [c for c in group.ContentSequence if c.ValueType == "SCOORD"]
            (image,) = scoord.ContentSequence[0].ReferencedSOPSequence
            assert image.ReferencedSOPInstanceUID == original.SOPInstanceUID
        for code in _codes(sr.ContentSequence):  # the integrators' page lists every code the report uses
            assert f"({code[0]}, {code[1]}" in INTEGRATORS_PAGE, code


INTEGRATORS_PAGE = (Path(__file__).parents[1] / "docs" / "structured-report.md").read_text()


@pytest.mark.parametrize(
    "photometric, dtype, window, lut",
    [
        ("MONOCHROME2", np.uint8, None, "IDENTITY"),  # 8-bit display values: shown as they are
        ("MONOCHROME1", np.uint16, None, "INVERSE"),  # no window: the stored range; high values dark
        ("MONOCHROME2", np.uint16, (1800.0, 900.0), "IDENTITY"),  # the modality's own window
    ],
)
def test_presentation_state_shows_the_original_as_it_is(tmp_path, photometric, dtype, window, lut):
    from pneumolens.integration.dicom_presentation import GSPS, presentation_state

    gray = read_image(real_images("test", "NORMAL", 1)[0])
    pixels = np.round(gray * (255 if dtype == np.uint8 else 3000) + (0 if dtype == np.uint8 else 500)).astype(dtype)
    path = make_dicom(tmp_path / "x.dcm", pixels, photometric, window=window)
    original = pydicom.dcmread(path)
    original.PatientBirthDate = BAD_BIRTH_DATE  # left out rather than failing the object
    heatmap = np.full(pixels.shape, -0.1, np.float32)
    heatmap[50:90, 30:70] = 0.8
    model = {"name": "pneumolens-default", "version": "9.9", "sha256": "ab" * 32}
    explanation = SimpleNamespace(outlines=map_outlines(heatmap))
    result = {"method": "occlusion", "explanation": explanation, "model": model}
    pr = presentation_state(original, result, pydicom.uid.generate_uid(), "AI first read: ...; not a diagnosis")
    pr.save_as(tmp_path / "pr.dcm", enforce_file_format=True)
    pr = pydicom.dcmread(tmp_path / "pr.dcm")
    drawn = read_presentation_state(pr)
    assert pr.SOPClassUID == GSPS and pr.Modality == "PR" and pr.StudyInstanceUID == original.StudyInstanceUID
    assert drawn["image"] == original.SOPInstanceUID and pr.PatientBirthDate == ""
    assert drawn["texts"] == ["AI first read: ...; not a diagnosis"] and drawn["presentation_lut"] == lut
    (outline,) = drawn["outlines"]
    assert outline.min(axis=0) == pytest.approx([30, 50], abs=1) and outline.max(axis=0) == pytest.approx(
        [70, 90], abs=1
    )
    if window:
        assert drawn["window"] == window
    elif dtype == np.uint8:
        assert drawn["window"] == (127.5, 255.0)
    else:  # the stored range: what pneumolens reads the image through
        lo, hi = float(pixels.min()), float(pixels.max())
        assert drawn["window"] == pytest.approx(((lo + hi) / 2, hi - lo))


def test_segmentation_holds_the_map_s_graded_support(tmp_path):
    """The map's support relative to its peak, on the original's grid, read back from the file: the
    peak 1, half of it 0.5 (the outline's level), against the call 0; private codes listed on the
    integrators' page; nothing when nothing supports the call; another grid refused."""
    import highdicom as hd

    from pneumolens.integration.dicom_segmentation import SEGMENTATION, segmentation

    gray = read_image(real_images("test", "NORMAL", 1)[0])
    pixels = np.round((1 - gray) * 3000 + 500).astype(np.uint16)[:, :200]  # not square: rows and columns apart
    original = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels, "MONOCHROME1"))
    original.PatientBirthDate = BAD_BIRTH_DATE  # left out rather than failing the object
    heatmap = np.full(pixels.shape, -0.3, np.float32)  # against the call everywhere...
    heatmap[50:90, 30:70] = 0.8  # ...but for one region, half of it at half the peak
    heatmap[50:90, 30:50] = 0.4
    model = {"name": "pneumolens-default", "version": "9.9", "sha256": "ab" * 32}
    result = {"method": "occlusion", "explanation": SimpleNamespace(heatmap=heatmap), "model": model}
    segmentation(original, result, pydicom.uid.generate_uid()).save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    read = read_segmentation(seg)
    assert (
        seg.SOPClassUID == SEGMENTATION and seg.Modality == "SEG" and seg.StudyInstanceUID == original.StudyInstanceUID
    )
    assert (
        str(seg.PatientID) == PATIENT_ID and seg.PatientBirthDate == "" and "not a diagnosis" in seg.SeriesDescription
    )
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert read["image"] == original.SOPInstanceUID and read["label"] == "AI map (occlusion)"
    assert read["map"].shape == pixels.shape
    expected = np.zeros(pixels.shape, np.float32)
    expected[50:90, 30:70], expected[50:90, 30:50] = 1.0, 0.5
    np.testing.assert_allclose(read["map"], expected, atol=0.5 / 255 + 1e-6)
    (segment,) = hd.seg.segread(tmp_path / "seg.dcm").SegmentSequence  # highdicom reads it back
    for code in (segment.SegmentedPropertyCategoryCodeSequence[0], segment.SegmentedPropertyTypeCodeSequence[0]):
        assert f"({code.CodeValue}, {code.CodingSchemeDesignator}" in INTEGRATORS_PAGE
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]  # the film has no spacing
    original.ImagerPixelSpacing = [0.139, 0.14]  # a detector's: the segmentation's grid has it too (OHIF reads it)
    (measures,) = segmentation(original, result, "1.2.3").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert [float(v) for v in measures.PixelSpacing] == [0.139, 0.14]
    nothing = {**result, "explanation": SimpleNamespace(heatmap=np.full(pixels.shape, -0.3, np.float32))}
    assert segmentation(original, nothing, pydicom.uid.generate_uid()) is None
    other = {**result, "explanation": SimpleNamespace(heatmap=heatmap[:, :100])}
    with pytest.raises(ValueError, match="not the same grid"):
        segmentation(original, other, pydicom.uid.generate_uid())


def _codes(items):
    for item in items:
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if seq in item:
                code = item[seq][0]
                yield code.get("CodeValue") or code.LongCodeValue, code.CodingSchemeDesignator
        if "MeasuredValueSequence" in item:
            unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
            yield unit.CodeValue, unit.CodingSchemeDesignator
        if "ContentSequence" in item:
            yield from _codes(item.ContentSequence)


# ------------------------------------------------------------------------------------------ wheel


def test_wheel_works_alone_in_a_fresh_venv(tmp_path):
    """``pip install .`` carries the shipped models: the API and CLI work from the wheel alone."""
    root = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-w", str(wheels), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("pneumolens-*.whl"))
    names = __import__("zipfile").ZipFile(wheel).namelist()
    assert "pneumolens/assets/default.safetensors" in names and "pneumolens/assets/lungs.safetensors" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # the dependencies come from this environment's site-packages, appended after the venv's own
    site = next(p for p in sys.path if p.endswith("site-packages"))
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "deps.pth").write_text(site + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    image = real_images("test", "PNEUMONIA", 1)[0]
    code = (
        "import pneumolens, sys; m = pneumolens.load(); r = m.predict(sys.argv[1], explain='gradcam'); "
        "print(pneumolens.__file__); print(r.probability, r.label, r.heatmap.shape)"
    )
    run = subprocess.run([str(py), "-c", code, str(image)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    where, result = run.stdout.splitlines()[-2:]
    assert where.startswith(str(venv)) and result.split()[1] in ("NORMAL", "PNEUMONIA")
    cli = subprocess.run(
        [str(venv / "bin" / "pneumolens"), "predict", str(image), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert cli.returncode == 0 and 0 <= json.loads(cli.stdout)["probability"] <= 1
