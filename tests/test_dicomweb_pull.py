"""``pneumolens pull --dicomweb`` (``pneumolens.integration.dicomweb_pull``): the studies of some dates found by
QIDO-RS, their CR and DX series retrieved by WADO-RS into a folder or stored by STOW-RS at a node,
from a running node's own DICOMweb service (``listen --qr --keep --dicomweb-port``, with a bearer
token) as the archive."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import PATIENT_ID, assert_refused, free_port, make_dicom, real_images
from pneumolens.cli import main
from pneumolens.data.images import read_image


@pytest.fixture
def archive(trained_run, tmp_path):
    """A running node holding two films (studies of 2026-12-01 and 2026-12-05) and their results,
    served over DICOMweb to the bearer of a token; yields (its URL, the two films' datasets, the
    node, the token's file)."""
    from dicomweb_client.api import DICOMwebClient

    from pneumolens.integration.dicom_node import Node
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore
    from pneumolens.integration.dicomweb_service import DicomwebService
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    out, keep = tmp_path / "out", tmp_path / "keep"
    out.mkdir(), keep.mkdir()
    qr = QueryRetrieve(ResultStore(out, keep), "PNEUMOLENS")
    node = Node(Engine(Settings(model=str(trained_run))), None, out, sr=True, keep=keep, qr=qr)
    port = free_port()
    node.web = DicomwebService(port, "s3cret")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    stop, ready = threading.Event(), threading.Event()
    runner = threading.Thread(
        target=node.run, args=("127.0.0.1", free_port(), stop, 1.0), kwargs={"on_ready": ready.set}
    )
    runner.start()
    assert ready.wait(30)
    url = f"http://127.0.0.1:{port}/dicomweb"
    films = []
    for i, (path, day) in enumerate(zip(real_images("test", "PNEUMONIA", 2), ("20261201", "20261205"), strict=True)):
        pixels = np.round(read_image(path) * 255).astype(np.uint8)
        ds = pydicom.dcmread(make_dicom(tmp_path / f"{i}.dcm", pixels))
        ds.StudyDate = day
        films.append(ds)
    DICOMwebClient(url, headers={"Authorization": "Bearer s3cret"}).store_instances(films)
    yield url, films, node, str(token)
    stop.set()
    runner.join(15)


def test_pull_retrieves_the_films_of_the_dates_into_a_folder(archive, tmp_path, capsys):
    url, films, _, token = archive
    into = tmp_path / "got"
    asked = ["pull", "--dicomweb", url, "--dicomweb-token-file", token, "--since", "2026-12-01"]
    assert main([*asked, "--until", "2026-12-03", "--get", str(into)]) == 0
    said = capsys.readouterr().out
    assert "1 studies match" in said and "1 image retrieved" in said
    (got,) = [pydicom.dcmread(f) for f in into.iterdir()]  # the film, not the node's picture or report
    assert got.SOPInstanceUID == films[0].SOPInstanceUID and got.PixelData == films[0].PixelData
    assert PATIENT_ID not in said and films[0].StudyInstanceUID not in said  # names no patient, no UID

    assert main([*asked, "--dry-run"]) == 0
    assert "2 studies match" in capsys.readouterr().out


def test_pull_stores_a_study_at_a_node_over_stow_rs(archive, capsys):
    url, films, node, token = archive
    before = node.stored
    asked = ["pull", "--dicomweb", url, "--dicomweb-token-file", token, "--study", films[1].StudyInstanceUID]
    assert main([*asked, "--to-url", url, "--to-token-file", token]) == 0  # the node reads it again
    assert "1 image moved" in capsys.readouterr().out
    assert node.stored == before + 1


def test_a_renewed_token_file_is_read_again_during_a_pull(archive, tmp_path):
    """The token file is read again when it changes, request by request: a token that expired mid-pull
    is answered 401 by the archive, and the renewed one is taken without starting again."""
    import os

    from pneumolens.integration.credentials import TokenFile
    from pneumolens.integration.dicomweb_pull import WebPacs

    url, _, _, token = archive
    with WebPacs(url, TokenFile(token, "--dicomweb-token-file"), get_into=tmp_path) as pacs:
        assert len(pacs.studies("20261201-20261205")) == 2
        for text, stamp in (("expired", 1_000_000), ("s3cret", 2_000_000)):  # a new modification time each
            Path(token).write_text(text + "\n")
            os.utime(token, (stamp, stamp))
            if text == "expired":
                with pytest.raises(ValueError, match="HTTP 401"):
                    pacs.studies("20261201-20261205")
        assert len(pacs.studies("20261201-20261205")) == 2


def test_pull_says_what_went_wrong_with_the_service(archive, tmp_path, capsys):
    url, _, _, token = archive
    nowhere = f"http://127.0.0.1:{free_port()}/dicomweb"
    base = ["pull", "--since", "2026-12-01"]
    cases = [
        (["--dicomweb", nowhere, "--get", str(tmp_path)], "could not be reached"),
        (["--dicomweb", url, "--get", str(tmp_path)], "HTTP 401"),  # no token
        (["--dicomweb", url + "/elsewhere", "--dicomweb-token-file", token, "--get", str(tmp_path)], "HTTP 404"),
        (["--pacs", "PACS@h:104", "--dicomweb", url], "name the PACS once"),
        (["--dicomweb", url], "--get DIR or --to-url URL"),
        (["--dicomweb", "pacs.example", "--get", str(tmp_path)], "expected http(s)://"),
        (
            ["--dicomweb", url, "--to-url", url, "--dicomweb-token-file", str(tmp_path / "none")],
            "--dicomweb-token-file",
        ),
        (["--pacs", "PACS@h:104", "--to-url", url], "--to-url is for --dicomweb"),
        (["--dicomweb", url, "--get", str(tmp_path), "--tls-ca", token], "are for --pacs"),
        (["--dicomweb", url, "--get", str(tmp_path), "--to-token-file", token], "--to-token-file is for --to-url"),
    ]
    assert_refused(capsys, base, cases)
