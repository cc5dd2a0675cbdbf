"""Store and forward to a FHIR server (``pneumolens.integration.fhir_outbox``, ``listen --fhir-url``), against a
stand-in server on this machine: what it receives, and that nothing is lost while it is away or
refuses."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from conftest import PATIENT_ID, PATIENT_NAME, StandIn, assert_refused, make_dicom, real_images, reply, store_then_wait
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.integration.credentials import TokenFile, read_token
from pneumolens.integration.fhir import transaction
from pneumolens.integration.fhir_outbox import FhirSender
from pneumolens.integration.outbox import Outbox

MODEL = {"name": "pneumolens-default", "version": "9.9", "sha256": "cd" * 32}
RESULT = {"probability": 0.8, "threshold": 0.4, "flags": [], "model": MODEL}


def _json(bundle: dict) -> bytes:
    return json.dumps(bundle).encode()


class FhirServer(StandIn):
    """Answers each POST with the next of ``statuses`` (then 200), keeping what it received."""

    def __init__(self, statuses=()):
        self.statuses, self.received = list(statuses), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = server.statuses.pop(0) if server.statuses else 200
                server.received.append((self.path, dict(self.headers), json.loads(body), status))
                if status < 300:
                    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
                else:
                    answer = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
                reply(self, status, json.dumps(answer).encode(), "application/fhir+json")

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url = f"{self.base}/fhir"


@pytest.fixture
def fhir_server(stand_ins):
    return lambda statuses=(): stand_ins(FhirServer, statuses)


def test_a_bundle_is_delivered_once_and_leaves_the_outbox(fhir_server, tmp_path):
    server = fhir_server()
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url, "s3cret"))
    outbox.put("1.2.3", _json(transaction(RESULT, "1.2.3", "1.2", "1.2.3")))
    assert [p.name for p in outbox.waiting()] == ["1.2.3.json"]
    assert outbox.deliver() and outbox.waiting() == [] and outbox.delivered == 1
    ((path, headers, body, _),) = server.received
    assert path == "/fhir" and headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/fhir+json"
    bundle = Bundle.model_validate(body)  # what the server got is a valid R4B transaction
    assert bundle.type == "transaction" and [e.request.url for e in bundle.entry] == ["Observation", "DiagnosticReport"]
    assert outbox.deliver() and len(server.received) == 1  # nothing left to send


def test_the_outbox_keeps_bundles_while_the_server_is_away_and_sends_them_in_order(fhir_server, tmp_path, caplog):
    server = fhir_server([503])
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url))
    for uid in ("1.1", "1.2"):
        outbox.put(uid, _json(transaction(RESULT, uid)))
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver()  # 503: stop the pass, keep both
    assert len(outbox.waiting()) == 2 and "HTTP 503" in caplog.text and "2 message(s) wait" in caplog.text
    assert outbox.deliver() and outbox.waiting() == []
    sent = [body["entry"][0]["resource"]["identifier"][0]["value"] for _, _, body, _ in server.received]
    first, second = (transaction(RESULT, uid)["entry"][0]["fullUrl"] for uid in ("1.1", "1.2"))
    assert sent == [first, first, second]  # the same bundle again, then the next, oldest first

    closed = Outbox(
        tmp_path / "outbox2", FhirSender("http://127.0.0.1:9/fhir?token=hidden")
    )  # nothing listens on port 9
    closed.put("2.1", _json(transaction(RESULT, "2.1")))
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not closed.deliver()
    assert len(closed.waiting()) == 1 and "could not be reached" in caplog.text
    assert "hidden" not in caplog.text  # a URL's query can hold a secret: only scheme, host and port are logged


@pytest.mark.parametrize("status, kept", [(401, True), (429, True), (400, False), (422, False)])
def test_a_refused_bundle_is_kept_aside_with_the_answer(fhir_server, tmp_path, status, kept):
    server = fhir_server([status])
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url))
    outbox.put("3.1", _json(transaction(RESULT, "3.1")))
    outbox.put("3.2", _json(transaction(RESULT, "3.2")))
    if kept:  # the server may take it later (credentials fixed, load gone): it waits
        assert not outbox.deliver() and len(outbox.waiting()) == 2
        return
    assert outbox.deliver() and outbox.waiting() == [] and outbox.rejected == 1 and outbox.delivered == 1
    rejected = tmp_path / "outbox" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == ["3.1.answer", "3.1.json"]
    assert json.loads((rejected / "3.1.answer").read_text())["resourceType"] == "OperationOutcome"


def test_a_sender_that_fails_keeps_the_message_and_its_thread(fhir_server, tmp_path, caplog):
    server = fhir_server()
    sender = FhirSender(server.url)
    calls = []

    def failing(body):
        calls.append(body)
        if len(calls) == 1:
            raise RuntimeError("a fault of the sender's own")
        return sender(body)

    failing.kind, failing.where = sender.kind, sender.where
    outbox = Outbox(tmp_path / "outbox", failing, retry_every=0.05)
    outbox.put("4.2", _json(transaction(RESULT, "4.2")))
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        thread = outbox.start(stop)
        for _ in range(200):
            if outbox.delivered:
                break
            threading.Event().wait(0.02)
        outbox.stop(stop, thread)
    assert "could not be sent (RuntimeError)" in caplog.text
    assert outbox.delivered == 1 and len(calls) == 2  # kept, and sent by the same thread's next pass


def test_the_sender_thread_delivers_when_woken_and_stops(fhir_server, tmp_path):
    server = fhir_server()
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url), retry_every=30.0)
    stop = threading.Event()
    thread = outbox.start(stop)
    outbox.put("4.1", _json(transaction(RESULT, "4.1")))  # wakes the sender at once, long before 30 s
    for _ in range(200):
        if outbox.delivered:
            break
        threading.Event().wait(0.02)
    outbox.stop(stop, thread)
    assert outbox.delivered == 1 and not thread.is_alive()


def test_the_node_queues_a_bundle_for_each_image(fhir_server, trained_run, tmp_path):
    from pneumolens.integration.dicom_node import SUCCESS, Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    server = fhir_server()
    outbox = Outbox(tmp_path / "fhir" / "outbox", FhirSender(server.url))
    node = Node(
        Engine(Settings(model=str(trained_run))), None, tmp_path / "out", fhir=tmp_path / "fhir", fhir_outbox=outbox
    )
    node.out.mkdir()
    pixels = np.round(read_image(real_images("test", "PNEUMONIA", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    event = SimpleNamespace(dataset=sent, file_meta=sent.file_meta)
    assert node.handle_store(event) == SUCCESS and node.handle_store(event) == SUCCESS  # sent twice
    (queued,) = outbox.waiting()  # the same image: one bundle, named by its SOP Instance UID
    assert queued.name == f"{sent.SOPInstanceUID}.json"
    text = queued.read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert outbox.deliver()
    bundle = Bundle.model_validate(server.received[0][2])
    report = bundle.entry[1].resource
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{sent.StudyInstanceUID}"
    assert report.result[0].reference == bundle.entry[0].fullUrl


def test_listen_checks_the_fhir_flags_before_loading_a_model(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("abc def\n")
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    cases = [
        (["--fhir-url", "http://ehr.example/fhir"], "--fhir-url needs --fhir DIR"),
        (["--fhir", str(tmp_path / "f"), "--fhir-url", "ftp://ehr.example/fhir"], "--fhir-url: expected an http"),
        (["--fhir-token-file", str(token)], "--fhir-token-file is for --fhir-url"),
        (["--fhir", str(tmp_path / "f"), "--fhir-url", "http://h/fhir", "--fhir-token-file", str(token)], "one token"),
        (["--fhir", str(tmp_path / "f"), "--fhir-url", "http://h/fhir", "--fhir-token-file", "nope"], "nope: cannot"),
        (["--fhir", str(tmp_path / "f"), "--fhir-url", "http://h/fhir", "--fhir-ca", str(token)], "for an https://"),
        (["--fhir", str(tmp_path / "f"), "--fhir-url", "https://h/fhir", "--fhir-ca", str(token)], "--fhir-ca"),
    ]
    assert_refused(capsys, base, cases)


def test_a_token_file_holds_one_token(tmp_path):
    path = tmp_path / "t"
    path.write_text("  tok-123\n")
    assert read_token(str(path)) == "tok-123"
    path.write_text("\n")
    with pytest.raises(ValueError, match="one token"):
        read_token(str(path))


def test_a_renewed_token_file_is_read_again_without_a_restart(fhir_server, tmp_path, caplog):
    server = fhir_server()
    path = tmp_path / "token"
    path.write_text("first\n")
    outbox = Outbox(tmp_path / "outbox", FhirSender(server.url, TokenFile(str(path), "--fhir-token-file")))
    outbox.put("6.1", _json(transaction(RESULT, "6.1")))
    assert outbox.deliver()
    path.write_text("second\n")
    os.utime(path, (1, 1))  # a renewal within the file system's time resolution is still seen
    outbox.put("6.2", _json(transaction(RESULT, "6.2")))
    assert outbox.deliver()
    path.write_text("")  # a renewal caught half-written: the last good token is kept, the log says so
    os.utime(path, (2, 2))
    outbox.put("6.3", _json(transaction(RESULT, "6.3")))
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.credentials"):
        assert outbox.deliver()
    tokens = [headers["Authorization"] for _, headers, _, _ in server.received]
    assert tokens == ["Bearer first", "Bearer second", "Bearer second"]
    assert "--fhir-token-file" in caplog.text and "one token" in caplog.text and "second" not in caplog.text


def test_the_running_node_sends_what_an_earlier_run_left_and_what_it_reads(fhir_server, trained_run, tmp_path):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    server = fhir_server()
    outbox = Outbox(tmp_path / "fhir" / "outbox", FhirSender(server.url))
    outbox.put("5.1", _json(transaction(RESULT, "5.1")))  # left by a run whose server was away
    node = Node(
        Engine(Settings(model=str(trained_run))), None, tmp_path / "out", fhir=tmp_path / "fhir", fhir_outbox=outbox
    )
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    store_then_wait(node, sent, lambda: outbox.delivered == 2)
    assert outbox.delivered == 2 and outbox.waiting() == []
    firsts = [body["entry"][0]["fullUrl"] for _, _, body, _ in server.received]
    assert firsts[0] == transaction(RESULT, "5.1")["entry"][0]["fullUrl"]  # the older one first


def test_the_outbox_command_counts_and_requeues_what_was_refused(fhir_server, tmp_path, capsys):
    server = fhir_server([422])
    outbox = Outbox(tmp_path / "fhir" / "outbox", FhirSender(server.url))
    outbox.put("7.1", _json(transaction(RESULT, "7.1")))
    assert outbox.deliver() and outbox.rejected == 1
    outbox.put("7.2", _json(transaction(RESULT, "7.2")))  # and one not yet sent
    assert main(["outbox", str(tmp_path / "fhir")]) == 1  # the --fhir folder names its outbox
    out = capsys.readouterr().out
    assert "1 message(s) waiting" in out and "1 refused" in out and "--requeue" in out
    assert "7.1" not in out  # counts and times, no message
    assert main(["outbox", str(outbox.folder), "--requeue"]) == 1
    assert "1 refused message(s) back" in capsys.readouterr().out
    assert not list((outbox.folder / "rejected").iterdir())  # the answer went with it
    assert outbox.deliver() and outbox.delivered == 2  # the mended server takes both
    assert main(["outbox", str(outbox.folder)]) == 0 and "0 message(s) waiting" in capsys.readouterr().out
    assert main(["outbox", str(tmp_path)]) == 2 and "not an outbox" in capsys.readouterr().err
