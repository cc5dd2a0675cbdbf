"""The node's own query/retrieve service (``pneumolens.integration.dicom_qr``, ``listen --qr``): a viewer finds
the results of a real film by study, series and image, and has them sent by C-GET and C-MOVE,
against pynetdicom clients."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import PATIENT_ID, PATIENT_NAME, assert_refused, free_port, make_certificates, make_dicom, real_images
from pneumolens.data.images import read_image
from pneumolens.integration.dicom_qr import FIND, GET, MOVE, PATIENT_FIND, PATIENT_GET, matches

MODALITY_BY_SERIES = {9901: "OT", 9902: "SR", 9903: "PR"}


def query(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_matching_follows_the_standard_s_rules():
    header = Dataset()
    header.PatientID, header.StudyDate, header.StudyInstanceUID, header.Modality = "AB-12", "20261203", "1.2.3", "SR"
    assert matches(query("STUDY", PatientID="", StudyDate=""), header)  # universal
    assert matches(query("STUDY", PatientID="AB*", StudyDate="20261201-20261206"), header)
    assert matches(query("STUDY", PatientID="AB-1?", StudyDate="-20261203"), header)
    assert matches(query("STUDY", StudyInstanceUID="9.9\\1.2.3"), header)  # a list of UIDs
    assert not matches(query("STUDY", StudyInstanceUID="1.2"), header)  # no prefix matching for UIDs
    assert not matches(query("STUDY", StudyDate="20261204-"), header)
    assert not matches(query("STUDY", PatientID="ab*"), header)  # case-sensitive
    assert not matches(query("STUDY", AccessionNumber="X"), header)  # a key the file lacks


@pytest.fixture
def node_with_results(trained_run, tmp_path):
    with _serving_results(trained_run, tmp_path) as served:
        yield served


@contextmanager
def _serving_results(trained_run, tmp_path, pki: dict[str, str] | None = None):
    """A running node with --qr and --sr --gsps, holding the results of one real film; yields
    (port, the original film's dataset, what the move destination received, the node's query/retrieve
    service); a second storage SCP is the move destination, over mutual TLS with ``pki``."""
    from pynetdicom import AE, evt

    from pneumolens.integration.dicom_node import SUCCESS, Node, tls_context
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    received: list[Dataset] = []
    archive = AE(ae_title="ARCHIVE")
    for uid in ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"):
        archive.add_supported_context(uid)

    def stored(event):
        received.append(event.dataset)
        return SUCCESS

    archive_port = free_port()
    demands = tls_context(pki["server"], pki["server_key"], pki["ca"]) if pki else None  # the client's certificate
    archive_server = archive.start_server(
        ("127.0.0.1", archive_port), block=False, evt_handlers=[(evt.EVT_C_STORE, stored)], ssl_context=demands
    )
    out = tmp_path / "out"
    tls = tls_context(pki["client"], pki["client_key"], pki["ca"], False) if pki else None
    qr = QueryRetrieve(ResultStore(out), "PNEUMOLENS", {"ARCHIVE": ("127.0.0.1", archive_port)}, tls)
    node = Node(Engine(Settings(model=str(trained_run))), None, out, sr=True, gsps=True, qr=qr)
    pixels = np.round(read_image(real_images("test", "PNEUMONIA", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    stop, port = threading.Event(), free_port()
    ready = threading.Event()
    runner = threading.Thread(target=node.run, args=("127.0.0.1", port, stop, 1.0), kwargs={"on_ready": ready.set})
    runner.start()
    assert ready.wait(30)
    assert node.handle_store(SimpleNamespace(dataset=sent, file_meta=sent.file_meta)) == SUCCESS
    try:
        yield SimpleNamespace(port=port, sent=sent, received=received, qr=qr)
    finally:
        stop.set()
        runner.join(15)
        archive_server.shutdown()


def _find(port: int, identifier: Dataset, model: str = FIND) -> list[tuple[int, Dataset | None]]:
    from pynetdicom import AE

    viewer = AE(ae_title="VIEWER")
    viewer.add_requested_context(model)
    assoc = viewer.associate("127.0.0.1", port, ae_title="PNEUMOLENS")
    assert assoc.is_established
    try:
        return [(int(status.Status), found) for status, found in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def test_a_viewer_finds_the_results_by_study_series_and_image(node_with_results):
    port, sent = node_with_results.port, node_with_results.sent
    study = _find(port, query("STUDY", StudyInstanceUID="", PatientID=PATIENT_ID[:6] + "*", PatientName=""))
    (status, found), (final, _) = study
    assert (status, final) == (0xFF00, 0x0000) and found.StudyInstanceUID == sent.StudyInstanceUID
    assert found.PatientName == PATIENT_NAME and found.RetrieveAETitle == "PNEUMOLENS"  # the keys asked for
    series = _find(port, query("SERIES", StudyInstanceUID=sent.StudyInstanceUID, SeriesNumber="", Modality=""))
    numbers = sorted(int(found.SeriesNumber) for status, found in series if status == 0xFF00)
    assert numbers == [9901, 9902, 9903]  # the picture, the report, the presentation state
    reports = _find(port, query("SERIES", StudyInstanceUID=sent.StudyInstanceUID, Modality="SR", SeriesInstanceUID=""))
    assert [found.Modality for status, found in reports if status == 0xFF00] == ["SR"]
    images = _find(port, query("IMAGE", StudyInstanceUID=sent.StudyInstanceUID, SOPInstanceUID="", SOPClassUID=""))
    assert len([1 for status, _ in images if status == 0xFF00]) == 3
    counted = query("STUDY", StudyInstanceUID="", ModalitiesInStudy="SR", NumberOfStudyRelatedInstances="")
    counted.NumberOfStudyRelatedSeries = ""
    ((_, found), _) = _find(port, counted)  # the attributes a PACS computes, and matching on the modalities
    assert list(found.ModalitiesInStudy) == ["OT", "PR", "SR"]
    assert (found.NumberOfStudyRelatedInstances, found.NumberOfStudyRelatedSeries) == (3, 3)
    assert [s for s, _ in _find(port, query("STUDY", StudyInstanceUID="", ModalitiesInStudy="CT"))] == [0x0000]
    each = _find(port, query("SERIES", StudyInstanceUID=sent.StudyInstanceUID, NumberOfSeriesRelatedInstances=""))
    assert [found.NumberOfSeriesRelatedInstances for status, found in each if status == 0xFF00] == [1, 1, 1]
    nothing = _find(port, query("STUDY", StudyInstanceUID="", PatientID="SOMEONE-ELSE"))
    assert [status for status, _ in nothing] == [0x0000]
    (bad,) = _find(port, query("PATIENT", PatientID=""))
    assert bad[0] == 0xA900  # Study Root: no patient level

    patients = _find(
        port, query("PATIENT", PatientID="", PatientName="", NumberOfPatientRelatedStudies=""), PATIENT_FIND
    )
    ((status, patient), (final, _)) = patients  # Patient Root: the patient, once for the three objects
    assert (status, final, patient.PatientID, patient.PatientName) == (0xFF00, 0x0000, PATIENT_ID, PATIENT_NAME)
    assert patient.NumberOfPatientRelatedStudies == 1
    studies = _find(port, query("STUDY", PatientID=PATIENT_ID, StudyInstanceUID=""), PATIENT_FIND)
    assert [found.StudyInstanceUID for status, found in studies if status == 0xFF00] == [sent.StudyInstanceUID]


def test_a_viewer_gets_and_moves_the_results(node_with_results):
    from pynetdicom import AE, build_role, evt

    port, sent = node_with_results.port, node_with_results.sent
    got: list[Dataset] = []

    def store(event):
        got.append(event.dataset)
        return 0x0000

    viewer = AE(ae_title="VIEWER")
    viewer.add_requested_context(GET)
    roles = []
    for uid in ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"):
        viewer.add_requested_context(uid)
        roles.append(build_role(uid, scp_role=True))
    assoc = viewer.associate(
        "127.0.0.1", port, ae_title="PNEUMOLENS", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    assert assoc.is_established
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(query("STUDY", StudyInstanceUID=sent.StudyInstanceUID), GET)]
    assoc.release()
    assert statuses[-1] == 0x0000 and len(got) == 3

    viewer = AE(ae_title="VIEWER")  # the same, at the patient level of Patient Root
    viewer.add_requested_context(PATIENT_GET)
    for uid in ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"):
        viewer.add_requested_context(uid)
    assoc = viewer.associate(
        "127.0.0.1", port, ae_title="PNEUMOLENS", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(query("PATIENT", PatientID=PATIENT_ID), PATIENT_GET)]
    assoc.release()
    assert statuses[-1] == 0x0000 and len(got) == 6
    assert {str(d.SOPClassUID) for d in got} == {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.11.1",
    }

    mover = AE(ae_title="VIEWER")
    mover.add_requested_context(MOVE)
    assoc = mover.associate("127.0.0.1", port, ae_title="PNEUMOLENS")
    series = query("SERIES", StudyInstanceUID=sent.StudyInstanceUID, Modality="SR")
    moved = [int(s.Status) for s, _ in assoc.send_c_move(series, "ARCHIVE", MOVE)]
    unknown = [int(s.Status) for s, _ in assoc.send_c_move(series, "NOBODY", MOVE)]
    assoc.release()
    assert moved[-1] == 0x0000 and [str(d.Modality) for d in node_with_results.received] == ["SR"]
    assert unknown[-1] == 0xA801  # not on --qr-dest


def test_c_move_reaches_its_destination_over_mutual_tls(trained_run, tmp_path):
    """With a TLS context (``--qr-dest-tls``) C-MOVE's sub-association presents the node's certificate
    to a destination that demands one, and the results arrive; over plain TCP that destination takes
    nothing and the move fails."""
    from pynetdicom import AE

    pki = make_certificates(tmp_path)
    with _serving_results(trained_run, tmp_path, pki) as served:
        series = query("SERIES", StudyInstanceUID=served.sent.StudyInstanceUID, Modality="SR")
        mover = AE(ae_title="VIEWER")
        mover.add_requested_context(MOVE)
        assoc = mover.associate("127.0.0.1", served.port, ae_title="PNEUMOLENS")
        moved = [int(s.Status) for s, _ in assoc.send_c_move(series, "ARCHIVE", MOVE)]
        served.qr.tls = None  # the same move over plain TCP
        plain = [int(s.Status) for s, _ in assoc.send_c_move(series, "ARCHIVE", MOVE)]
        assoc.release()
    assert moved[-1] == 0x0000 and [str(d.Modality) for d in served.received] == ["SR"]
    assert plain[-1] != 0x0000 and len(served.received) == 1


def test_listen_checks_the_qr_flags_before_loading_a_model(tmp_path, capsys):
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    assert_refused(
        capsys,
        base,
        [
            (["--qr-dest", "ARCHIVE@h:104"], "are for C-MOVE of --qr, which was not given"),
            (["--qr-dest-tls"], "are for C-MOVE of --qr, which was not given"),
            (["--qr", "--qr-dest", "ARCHIVE-h-104"], "expected AE_TITLE@host:port"),
            (["--qr", "--qr-dest", "@h:104"], "1 to 16 characters"),
            (["--qr", "--qr-dest-tls"], "--qr-dest-tls needs --qr-dest"),
            (["--qr", "--qr-dest", "A@h:104", "--qr-dest-tls"], "needs --tls-cert, --tls-key and --tls-ca"),
        ],
    )


def test_kept_films_go_back_by_c_get_and_on_by_c_move_as_they_came(trained_run, tmp_path):
    """With --keep, the film (JPEG-LS here) is served beside its picture: C-GET returns both, the
    film in the syntax it came in, and C-MOVE sends it on to a destination."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
    from pynetdicom import AE, build_role, evt

    from pneumolens.integration.dicom_node import DX_PRESENTATION, SECONDARY_CAPTURE, SUCCESS, Node
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    received: list[Dataset] = []
    archive = AE(ae_title="ARCHIVE")
    archive.add_supported_context(DX_PRESENTATION, [JPEGLSLossless, ExplicitVRLittleEndian])
    archive_port = free_port()
    archive_server = archive.start_server(
        ("127.0.0.1", archive_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e.dataset) or SUCCESS)],
    )
    out, keep = tmp_path / "out", tmp_path / "keep"
    qr = QueryRetrieve(ResultStore(out, keep), "PNEUMOLENS", {"ARCHIVE": ("127.0.0.1", archive_port)})
    node = Node(Engine(Settings(model=str(trained_run))), None, out, keep=keep, qr=qr)
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels, syntax="jpeg-ls"))
    stop, port, ready = threading.Event(), free_port(), threading.Event()
    runner = threading.Thread(target=node.run, args=("127.0.0.1", port, stop, 1.0), kwargs={"on_ready": ready.set})
    runner.start()
    try:
        assert ready.wait(30)
        assert node.handle_store(SimpleNamespace(dataset=sent, file_meta=sent.file_meta)) == SUCCESS
        got: list[Dataset] = []
        viewer = AE(ae_title="VIEWER")
        viewer.add_requested_context(GET)
        viewer.add_requested_context(SECONDARY_CAPTURE)
        viewer.add_requested_context(DX_PRESENTATION, [JPEGLSLossless])
        roles = [build_role(SECONDARY_CAPTURE, scp_role=True), build_role(DX_PRESENTATION, scp_role=True)]
        handlers = [(evt.EVT_C_STORE, lambda e: got.append(e.dataset) or SUCCESS)]
        assoc = viewer.associate("127.0.0.1", port, ae_title="PNEUMOLENS", ext_neg=roles, evt_handlers=handlers)
        assert assoc.is_established
        study = query("STUDY", StudyInstanceUID=sent.StudyInstanceUID)
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(study, GET)]
        assoc.release()
        assert statuses[-1] == 0x0000 and sorted(str(d.Modality) for d in got) == ["DX", "OT"]
        (film,) = [d for d in got if d.Modality == "DX"]
        assert film.PixelData == sent.PixelData  # as it came: JPEG-LS, not decoded

        mover = AE(ae_title="VIEWER")
        mover.add_requested_context(MOVE)
        assoc = mover.associate("127.0.0.1", port, ae_title="PNEUMOLENS")
        films = query("SERIES", StudyInstanceUID=sent.StudyInstanceUID, SeriesInstanceUID=sent.SeriesInstanceUID)
        moved = [int(s.Status) for s, _ in assoc.send_c_move(films, "ARCHIVE", MOVE)]
        assoc.release()
        assert moved[-1] == 0x0000 and [d.SOPInstanceUID for d in received] == [sent.SOPInstanceUID]
    finally:
        stop.set()
        runner.join(15)
        archive_server.shutdown()
