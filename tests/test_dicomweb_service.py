"""The node's own STOW-RS service (``pneumolens.integration.dicomweb_service``, ``listen --dicomweb-port``):
images taken over DICOMweb go the way a C-STORE does, and every answer is one a DICOMweb client
understands; dicomweb-client, a real client, stores through it."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from conftest import PATIENT_ID, assert_refused, free_port, make_dicom, real_images
from pneumolens.data.images import read_image
from pneumolens.integration.dicom_report import read_structured_report
from pneumolens.integration.dicomweb_service import DicomwebService, RelatedParts, create_app, instances

BOUNDARY = "pneumolens-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _multipart(*parts: bytes) -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[bytes]:
    """Two real films as DICOM files (two studies), and one without pixels."""
    folder = tmp_path_factory.mktemp("dicomweb")
    made = []
    for i, path in enumerate(real_images("test", "PNEUMONIA", 2)):
        pixels = np.round(read_image(path) * 255).astype(np.uint8)
        made.append(make_dicom(folder / f"{i}.dcm", pixels).read_bytes())
    made.append(make_dicom(folder / "empty.dcm", pixels, with_pixels=False).read_bytes())
    return made


@pytest.fixture
def node(trained_run, tmp_path):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    made = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", sr=True)
    made.out.mkdir()
    return made


def _uids(answer: dict, tag: str) -> list[str]:
    return [item["00081155"].get("Value", [""])[0] for item in answer.get(tag, {}).get("Value", [])]


def _reasons(answer: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.get("00081198", {}).get("Value", [])]


def test_the_parts_come_out_byte_for_byte(monkeypatch):
    """The parser that splits the request as it comes leaves binary parts as sent (CR, LF, NUL, high
    bytes, the boundary's start), whatever the chunks it arrives in; it skips a preamble, undoes a
    base64 transfer encoding, and keeps a part larger than its memory budget in a file on disk."""
    monkeypatch.setattr("pneumolens.integration.dicomweb_service.SPOOL_BYTES", 2000)
    rng = np.random.default_rng(3)
    for _ in range(50):
        parts = [rng.bytes(int(rng.integers(0, 4000))) + f"\r\n\n\r\x00\r--{BOUNDARY[:8]}".encode() for _ in range(3)]
        assert instances(CONTENT_TYPE, _multipart(*parts)) == parts
        body = b"a preamble, which readers ignore\r\n" + _multipart(*parts)
        with RelatedParts(CONTENT_TYPE) as spooled:
            cuts = np.sort(rng.integers(0, len(body), 6))
            for chunk in np.split(np.frombuffer(body, np.uint8), cuts):
                spooled.feed(chunk.tobytes())
            spooled.finish()
            assert [spooled.read(i) for i in range(len(spooled))] == parts
            assert [f._rolled for f in spooled.parts] == [len(part) > 2000 for part in parts]  # on disk
    encoded = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert instances(CONTENT_TYPE, encoded.encode() + base64.b64encode(parts[0]) + f"\r\n--{BOUNDARY}--".encode()) == [
        parts[0]
    ]
    for malformed, why in [
        (_multipart(*parts)[:-20], "ends before its closing boundary"),
        (f"--{BOUNDARY}--\r\n".encode(), "no instance"),
        (encoded.replace("base64", "x-gzip").encode() + f"x\r\n--{BOUNDARY}--".encode(), "x-gzip"),
    ]:
        with pytest.raises(ValueError, match=why):
            instances(CONTENT_TYPE, malformed)


def test_instances_taken_over_dicomweb_go_the_way_of_a_c_store(node, films):
    client = TestClient(create_app(node))
    sent = [pydicom.dcmread(io.BytesIO(f)) for f in films[:2]]
    r = client.post("/dicomweb/studies", content=_multipart(*films[:2]), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    assert _uids(r.json(), "00081199") == [ds.SOPInstanceUID for ds in sent] and "00081198" not in r.json()
    assert PATIENT_ID not in r.text  # UIDs only
    results = [pydicom.dcmread(p) for p in node.out.glob("*.dcm")]
    assert len(results) == 4 and node.stored == 2  # a picture and a report per film
    for made in results:  # children's films by their header's silence: no age caution
        assert "older_than_training" not in str(made.get("DerivationDescription", ""))

    adult = pydicom.dcmread(io.BytesIO(films[0]))  # an adult's film: read, with the caution in the results
    adult.SOPInstanceUID, adult.PatientAge = pydicom.uid.generate_uid(), "045Y"
    buf = io.BytesIO()
    adult.save_as(buf)
    before = set(node.out.glob("*.dcm"))
    r = client.post("/dicomweb/studies", content=_multipart(buf.getvalue()), headers={"Content-Type": CONTENT_TYPE})
    made = {ds.Modality: ds for ds in map(pydicom.dcmread, set(node.out.glob("*.dcm")) - before)}
    assert r.status_code == 200 and "check image: older_than_training" in made["OT"].DerivationDescription
    assert "older_than_training" in read_structured_report(made["SR"])["flags"]
    assert {ds.StudyInstanceUID for ds in results} == {ds.StudyInstanceUID for ds in sent}


def test_each_instance_is_answered_for_and_none_with_500(node, films):
    client = TestClient(create_app(node), raise_server_exceptions=False)
    film, empty = films[0], films[2]
    r = client.post(
        "/dicomweb/studies", content=_multipart(film, b"not dicom", empty), headers={"Content-Type": CONTENT_TYPE}
    )
    assert r.status_code == 202  # some read, some not
    assert _uids(r.json(), "00081199") == [pydicom.dcmread(io.BytesIO(film)).SOPInstanceUID]
    assert _reasons(r.json()) == [0xC000, 0xC000] and node.refused == 2
    assert _uids(r.json(), "00081198") == ["", pydicom.dcmread(io.BytesIO(empty)).SOPInstanceUID]

    encoded = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    bad = (encoded + "QUJD=\r\n").encode() + _multipart(film)  # a part whose base64 breaks, then a film
    r = client.post("/dicomweb/studies", content=bad, headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 202 and _reasons(r.json()) == [0xC000] and node.refused == 3  # that part, not a 500

    raw = pydicom.dcmread(io.BytesIO(film))
    raw.SOPInstanceUID = pydicom.uid.generate_uid()
    raw.PresentationIntentType = "FOR PROCESSING"  # the detector's raw values: not read, and said why
    buf = io.BytesIO()
    raw.save_as(buf)
    r = client.post("/dicomweb/studies", content=_multipart(buf.getvalue()), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409 and _reasons(r.json()) == [0xC000] and node.refused == 4

    lateral = pydicom.dcmread(io.BytesIO(film))  # the study's lateral view: taken, not read
    lateral.SOPInstanceUID = pydicom.uid.generate_uid()
    lateral.ViewPosition = "LL"
    buf = io.BytesIO()
    lateral.save_as(buf)
    results = len(list(node.out.glob("*.dcm")))
    node.keep = node.out.parent / "kept"  # acknowledged as stored: kept like any film taken
    node.keep.mkdir()
    r = client.post("/dicomweb/studies", content=_multipart(buf.getvalue()), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200 and _uids(r.json(), "00081199") == [lateral.SOPInstanceUID]
    assert node.skipped == 1 and node.refused == 4 and len(list(node.out.glob("*.dcm"))) == results
    assert [p.read_bytes() for p in node.keep.iterdir()] == [buf.getvalue()]
    node.keep = None

    node.notice = True  # --notice-not-read: the study then holds a note that this film had no first read
    lateral.SOPInstanceUID = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    lateral.save_as(buf)
    before = set(node.out.glob("*.dcm"))
    r = client.post("/dicomweb/studies", content=_multipart(buf.getvalue()), headers={"Content-Type": CONTENT_TYPE})
    (notice,) = [pydicom.dcmread(p) for p in set(node.out.glob("*.dcm")) - before]
    assert r.status_code == 200 and node.skipped == 2
    assert notice.DerivationDescription.startswith("AI did not read this image: not a frontal view (View Position LL)")
    assert "not a diagnosis" in notice.DerivationDescription and notice.Modality == "OT"
    assert notice.StudyInstanceUID == lateral.StudyInstanceUID and str(notice.PatientID) == PATIENT_ID
    assert notice.SourceImageSequence[0].ReferencedSOPInstanceUID == lateral.SOPInstanceUID
    assert notice.pixel_array.shape[2] == 3 and notice.pixel_array[..., 0].max() > 200  # the words, burnt in
    node.notice = False

    other = client.post("/dicomweb/studies/1.2.3.4", content=_multipart(film), headers={"Content-Type": CONTENT_TYPE})
    assert other.status_code == 409 and _reasons(other.json()) == [0xA901]  # not of the target study
    for headers, body, status in [
        ({"Content-Type": "application/json"}, b"{}", 415),
        ({"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'}, b"", 415),
        ({"Content-Type": CONTENT_TYPE}, b"--elsewhere--\r\n", 400),
        ({}, b"", 415),
    ]:
        r = client.post("/dicomweb/studies", content=body, headers=headers)
        assert r.status_code == status, (headers, r.text)
    assert client.get("/dicomweb/studies").status_code == 405  # no QIDO-RS

    def broken(*args):
        raise RuntimeError("a fault of the node's own")

    node.store = broken  # should the node fail on an instance, that instance fails, not the request
    r = client.post("/dicomweb/studies", content=_multipart(film), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409 and _reasons(r.json()) == [0xA700]


def test_a_bearer_token_and_a_size_limit_guard_the_port(node, films, tmp_path):
    (tmp_path / "token").write_text("wado-s3cret\n")
    from pneumolens.integration.credentials import TokenFile

    client = TestClient(create_app(node, TokenFile(str(tmp_path / "token"), "--dicomweb-token-file"), max_mb=1))
    body, headers = _multipart(films[0]), {"Content-Type": CONTENT_TYPE}
    for given in ({}, {"Authorization": "Bearer wrong"}):
        r = client.post("/dicomweb/studies", content=body, headers=headers | given)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert node.stored == 0
    ok = client.post("/dicomweb/studies", content=body, headers=headers | {"Authorization": "Bearer wado-s3cret"})
    assert ok.status_code == 200 and node.stored == 1
    big = client.post(
        "/dicomweb/studies",
        content=_multipart(b"x" * (1024 * 1024 + 1)),
        headers=headers | {"Authorization": "Bearer wado-s3cret"},
    )
    assert big.status_code == 413

    def chunks():  # no Content-Length: the limit is counted as the body comes
        yield _multipart(b"x" * (1024 * 1024 + 1))

    chunked = client.post(
        "/dicomweb/studies", content=chunks(), headers=headers | {"Authorization": "Bearer wado-s3cret"}
    )
    assert chunked.status_code == 413 and "content-length" not in chunked.request.headers

    def film_in_chunks():  # a sender that streams: taken like any other
        yield body[:1000]
        yield body[1000:]

    streamed = client.post(
        "/dicomweb/studies", content=film_in_chunks(), headers=headers | {"Authorization": "Bearer wado-s3cret"}
    )
    assert streamed.status_code == 200 and node.stored == 2


def test_dicomweb_client_stores_through_the_running_node(node, films):
    from dicomweb_client.api import DICOMwebClient

    port = free_port()
    node.web = DicomwebService(port)
    stop, answers = threading.Event(), []

    def send() -> None:
        client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb")
        datasets = [pydicom.dcmread(io.BytesIO(f)) for f in films[:2]]
        datasets[1].preamble = None  # as a dataset made in memory: the client writes no preamble nor DICM
        answers.append(client.store_instances(datasets))
        stop.set()

    node.run("127.0.0.1", free_port(), stop, on_ready=lambda: threading.Thread(target=send, daemon=True).start())
    (answer,) = answers
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert stored == [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in films[:2]] and node.stored == 2


def test_a_dicomweb_port_that_is_taken_is_named_and_frees_the_dimse_port(node):
    import socket

    from pneumolens.integration.dicomweb_service import DicomwebService

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node.web = DicomwebService(taken.getsockname()[1])
        dimse = free_port()
        with pytest.raises(ValueError, match=f"--dicomweb-port {taken.getsockname()[1]}: cannot listen"):
            node.run("127.0.0.1", dimse, threading.Event())
    with socket.socket() as again:  # the node let its DIMSE port go
        again.bind(("127.0.0.1", dimse))


def test_listen_checks_the_dicomweb_flags_before_loading_a_model(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("\n")
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    cases = [
        (["--dicomweb-token-file", str(token)], "--dicomweb-token-file is for --dicomweb-port"),
        (["--dicomweb-port", "11112"], "the DIMSE port"),
        (["--dicomweb-port", "8042", "--dicomweb-token-file", str(token)], "one token"),
    ]
    assert_refused(capsys, base, cases)


@pytest.fixture
def qr_node(node):
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore

    node.qr = QueryRetrieve(ResultStore(node.out), node.ae_title)
    return node


def test_the_results_are_searched_and_retrieved_over_dicomweb(qr_node, films):
    client = TestClient(create_app(qr_node))
    sent = [pydicom.dcmread(io.BytesIO(f)) for f in films[:2]]
    stored = client.post("/dicomweb/studies", content=_multipart(*films[:2]), headers={"Content-Type": CONTENT_TYPE})
    assert stored.status_code == 200

    studies = client.get("/dicomweb/studies")
    assert studies.status_code == 200 and studies.headers["content-type"] == "application/dicom+json"
    found = [pydicom.Dataset.from_json(d) for d in studies.json()]
    assert sorted(d.StudyInstanceUID for d in found) == sorted(ds.StudyInstanceUID for ds in sent)
    assert all(d.PatientID == PATIENT_ID for d in found)  # the results carry the patient, as over DIMSE
    assert found[0].RetrieveURL == f"http://testserver/dicomweb/studies/{found[0].StudyInstanceUID}"
    study = sent[0].StudyInstanceUID
    by_uid = client.get(f"/dicomweb/studies?0020000D={study}&includefield=SeriesDescription").json()
    assert [d["0020000D"]["Value"] for d in by_uid] == [[study]]
    assert client.get("/dicomweb/studies?PatientID=nobody").json() == []
    both = ",".join(ds.StudyInstanceUID for ds in sent)  # a list of UIDs, as QIDO-RS writes one
    assert len(client.get(f"/dicomweb/studies?StudyInstanceUID={both}").json()) == 2
    assert len(client.get("/dicomweb/studies?limit=1").json()) == 1
    assert len(client.get("/dicomweb/studies?limit=1&offset=1").json()) == 1

    series = [pydicom.Dataset.from_json(d) for d in client.get(f"/dicomweb/studies/{study}/series").json()]
    assert sorted(d.Modality for d in series) == ["OT", "SR"]  # the picture's series and the report's
    picture = next(d for d in series if d.Modality == "OT")
    url = f"/dicomweb/studies/{study}/series/{picture.SeriesInstanceUID}"
    (instance,) = [pydicom.Dataset.from_json(d) for d in client.get(url + "/instances").json()]
    written = pydicom.dcmread(qr_node.out / f"{instance.SOPInstanceUID}.dcm")

    got = client.get(f"{url}/instances/{instance.SOPInstanceUID}")
    assert got.status_code == 200 and got.headers["content-type"].startswith("multipart/related")
    (part,) = instances(got.headers["content-type"], got.content)
    assert part == (qr_node.out / f"{instance.SOPInstanceUID}.dcm").read_bytes()  # the file as the node wrote it
    whole = client.get(f"/dicomweb/studies/{study}")
    assert len(instances(whole.headers["content-type"], whole.content)) == 2  # the picture and the report
    (meta,) = client.get(url + "/metadata").json()
    assert pydicom.Dataset.from_json(meta).SOPInstanceUID == written.SOPInstanceUID
    assert set(meta["7FE00010"]) == {"vr", "BulkDataURI"}  # the pixels by reference, not inline

    for path, status in [
        ("/dicomweb/studies/1.2.3", 404),
        ("/dicomweb/studies/1.2.3/metadata", 404),
        ("/dicomweb/studies?NotAnAttribute=1", 400),
        ("/dicomweb/studies?limit=many", 400),
    ]:
        assert client.get(path).status_code == status, path


def test_without_qr_nothing_is_searched_and_the_token_guards_the_search(qr_node, node, films, tmp_path):
    from pneumolens.integration.dicom_node import Node

    plain = Node(node.engine, None, tmp_path / "plain")
    assert TestClient(create_app(plain)).get("/dicomweb/studies").status_code == 405  # STOW-RS only
    guarded = TestClient(create_app(qr_node, "s3cret"))
    assert guarded.get("/dicomweb/studies").status_code == 401
    assert guarded.get("/dicomweb/studies", headers={"Authorization": "Bearer s3cret"}).json() == []


def test_dicomweb_client_searches_and_retrieves_through_the_running_node(qr_node, films):
    from dicomweb_client.api import DICOMwebClient

    port = free_port()
    qr_node.web = DicomwebService(port)
    stop, got = threading.Event(), {}

    def use() -> None:
        client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb")
        try:
            client.store_instances([pydicom.dcmread(io.BytesIO(films[0]))])
            got["studies"] = client.search_for_studies(search_filters={"PatientID": PATIENT_ID})
            got["objects"] = client.retrieve_study(got["studies"][0]["0020000D"]["Value"][0])
        finally:
            stop.set()

    qr_node.run("127.0.0.1", free_port(), stop, on_ready=lambda: threading.Thread(target=use, daemon=True).start())
    assert len(got["studies"]) == 1
    assert sorted(ds.Modality for ds in got["objects"]) == ["OT", "SR"]
