"""``pneumolens pull``: C-FIND and C-MOVE against a real Query/Retrieve SCP (pynetdicom's qrscp), the
images landing on a running node."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from conftest import PATIENT_ID, PATIENT_NAME, free_port, make_dicom, real_images
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.service.settings import Settings

# study: (date, modality, images)
STUDIES = {"inside": ("20261102", "DX", 2), "before": ("20261015", "DX", 1), "other": ("20261105", "CT", 1)}


@pytest.fixture
def pacs(tmp_path):
    """A qrscp archive holding three studies (two in November, one of them not an X-ray), which knows
    the node's AE title, PNEUMOLENS, as a move destination. Yields (its port, the node's port, UIDs)."""
    port, node_port = free_port(), free_port()
    config = tmp_path / "qrscp.ini"
    config.write_text(
        f"[DEFAULT]\n  ae_title: QRSCP\n  port: {port}\n  max_pdu: 16382\n  acse_timeout: 30\n"
        f"  dimse_timeout: 30\n  network_timeout: 30\n  bind_address: 127.0.0.1\n"
        f"  instance_location: {tmp_path / 'instances'}\n  database_location: {tmp_path / 'db.sqlite'}\n"
        f"  log_identifier: False\n\n[PNEUMOLENS]\n  address: 127.0.0.1\n  port: {node_port}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    images = iter(real_images("test", "NORMAL", 4))
    files, uids = [], {}
    for name, (day, modality, n) in STUDIES.items():
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        uids[name] = study
        for i in range(n):
            pixels = np.round(read_image(next(images)) * 255).astype(np.uint8)
            path = make_dicom(tmp_path / f"{name}{i}.dcm", pixels)
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyDate, ds.Modality = study, series, day, modality
            ds.InstanceNumber = i + 1
            ds.save_as(path)
            files.append(path)
    try:
        deadline = time.monotonic() + 60
        while True:  # store them in the archive once it listens
            sent = subprocess.run(
                [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), *map(str, files)]
                + ["-aec", "QRSCP"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if sent.returncode == 0 and "Association Rejected" not in sent.stderr and "Aborted" not in sent.stderr:
                break
            assert time.monotonic() < deadline and proc.poll() is None, sent.stderr
            time.sleep(0.5)
        yield port, node_port, uids
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def node(trained_run, tmp_path, pacs):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine

    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "results")
    server = node.server("127.0.0.1", pacs[1])
    yield node
    server.shutdown()


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_pull_moves_the_x_rays_of_the_dates_to_the_node(pacs, node, capsys, caplog):
    caplog.set_level("INFO")
    port, _, uids = pacs
    where = ["--pacs", f"QRSCP@127.0.0.1:{port}", "--to", "PNEUMOLENS"]
    november = ["--since", "2026-11-01", "--until", "2026-11-30"]

    assert main(["pull", *where, *november, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 studies match" in out and "2026-11-02: would move 1 series" in out and node.stored == 0
    assert "2026-11-05: no CR or DX series" in out

    assert main(["pull", *where, *november]) == 0
    out = capsys.readouterr().out
    _wait_for(lambda: node.stored == 2)
    assert "2026-11-02: 1 series, 2 images moved" in out and "2 images moved, 0 failed" in out
    results = [pydicom.dcmread(f) for f in node.out.glob("*.dcm")]
    assert len(results) == 2 and {ds.StudyInstanceUID for ds in results} == {uids["inside"]}
    for secret in (PATIENT_NAME, PATIENT_ID, "Testperson", *uids.values()):  # who, never: no name, ID or UID
        assert secret not in out and secret not in caplog.text

    assert main(["pull", *where, "--study", uids["before"]]) == 0  # by UID, whatever its date
    _wait_for(lambda: node.stored == 3)
    assert "2026-10-15: 1 series, 1 image moved" in capsys.readouterr().out


def test_pull_gets_the_x_rays_into_a_folder_without_a_node(pacs, tmp_path, capsys, caplog):
    """--get DIR: the images come back over pull's own association (C-GET), no move destination."""
    caplog.set_level("INFO")
    port, _, uids = pacs
    args = ["pull", "--pacs", f"QRSCP@127.0.0.1:{port}", "--since", "2026-11-01", "--until", "2026-11-30"]
    assert main([*args, "--get", str(tmp_path / "got"), "--dry-run"]) == 0
    assert not (tmp_path / "got").exists() and "would move 1 series" in capsys.readouterr().out
    assert main([*args, "--get", str(tmp_path / "got")]) == 0
    out = capsys.readouterr().out
    assert "getting their CR or DX series into" in out and "2026-11-02: 1 series, 2 images retrieved" in out
    files = sorted((tmp_path / "got").iterdir())
    got = [pydicom.dcmread(f) for f in files]
    assert len(got) == 2 and {ds.StudyInstanceUID for ds in got} == {uids["inside"]}
    assert all(f.name == f"{ds.SOPInstanceUID}.dcm" for f, ds in zip(files, got, strict=True))
    assert all(ds.pixel_array.shape == (ds.Rows, ds.Columns) for ds in got)  # whole images, readable
    for secret in (PATIENT_NAME, PATIENT_ID, *uids.values()):
        assert secret not in out and secret not in caplog.text


def test_pull_names_what_went_wrong(pacs, node, capsys):
    port, node_port, _ = pacs
    where = ["--pacs", f"QRSCP@127.0.0.1:{port}"]
    november = ["--since", "2026-11-01", "--until", "2026-11-30"]
    assert main(["pull", *where, "--to", "NOBODY", *november]) == 1  # a destination the PACS does not know
    assert "move destination unknown" in capsys.readouterr().out and node.stored == 0
    assert main(["pull", *where, "--since", "2026-10-01", "--limit", "2"]) == 2  # 3 studies: none moved
    assert "3 studies match, more than --limit 2" in capsys.readouterr().err and node.stored == 0
    refusals = [
        ([*where], "--since, --until or --study"),
        ([*where, "--since", "2026-13-01"], "--since '2026-13-01': expected a date"),
        ([*where, "--since", "2026-11-30", "--until", "2026-11-01"], "--since 2026-11-30 is after --until"),
        (["--pacs", "QRSCP", "--since", "2026-11-01"], "expected AE_TITLE@host:port"),
        (["--pacs", f"QRSCP@127.0.0.1:{free_port()}", "--since", "2026-11-01"], "could not be reached"),
        (["--pacs", f"PNEUMOLENS@127.0.0.1:{node_port}", "--since", "2026-11-01"], "may not take Study Root queries"),
        ([*where, "--since", "2026-11-01", "--tls-cert", "a.pem"], "needs --tls-cert, --tls-key and --tls-ca together"),
    ]
    for args, message in refusals:
        assert main(["pull", *args]) == 2, args
        assert message in capsys.readouterr().err, message
    assert node.stored == 0


def test_date_range():
    from pneumolens.integration.dicom_pull import date_range

    assert date_range("2026-11-01", "20261130") == "20261101-20261130"
    assert date_range("2026-11-01", None) == "20261101-" and date_range(None, "2026-11-30") == "-20261130"
    assert date_range(None, None) == ""
    for bad in ("2026-02-30", "yesterday", "2026-1-1"):
        with pytest.raises(ValueError, match="--since"):
            date_range(bad, None)
