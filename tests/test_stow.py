"""The node's results stored in a PACS over DICOMweb (``pneumolens.integration.stow_outbox``, ``listen
--stow-url``), against a stand-in STOW-RS service on this machine: what it receives, how each of
its answers is taken, and that nothing is lost while it is away or refuses."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import logging
import os
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from conftest import PATIENT_ID, StandIn, assert_refused, make_dicom, real_images, reply, store_then_wait
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.integration.credentials import TokenFile
from pneumolens.integration.outbox import Outbox
from pneumolens.integration.stow_outbox import StowSender

SC, SR = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"  # Secondary Capture, Comprehensive SR


def _stow_answer(sop: str, reason: int | None = None, warning: int | None = None) -> dict:
    """A STOW-RS answer in DICOM JSON naming one instance: failed with ``reason``, or stored (with ``warning``)."""
    item = {"00081150": {"vr": "UI", "Value": [SC]}, "00081155": {"vr": "UI", "Value": [sop]}}
    if reason is not None:
        return {"00081198": {"vr": "SQ", "Value": [{**item, "00081197": {"vr": "US", "Value": [reason]}}]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return {"00081199": {"vr": "SQ", "Value": [item]}}


class StowServer(StandIn):
    """Answers each POST with the next of ``answers`` ((status, reason, warning, content type);
    then 200), keeping each instance it received."""

    def __init__(self, answers=()):
        self.answers, self.received = list(answers), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
                assert message.get_content_type() == "multipart/related"
                assert message.get_param("type") == "application/dicom"
                parts = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in message.iter_parts()]
                status, reason, warning, kind = server.answers.pop(0) if server.answers else (200, None, None, None)
                server.received.append((self.path, dict(self.headers), parts, status))
                data = b""
                if reason is not None or warning is not None or status < 300:
                    data = json.dumps(_stow_answer(parts[0].SOPInstanceUID, reason, warning)).encode()
                reply(self, status, data, kind or "application/dicom+json")

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url = f"{self.base}/dicomweb"


@pytest.fixture
def stow_server(stand_ins):
    return lambda answers=(): stand_ins(StowServer, answers)


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> bytes:
    """A real film as a DICOM file, as a modality would send it."""
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    return make_dicom(tmp_path_factory.mktemp("stow") / "x.dcm", pixels).read_bytes()


def test_the_node_stores_each_object_it_makes_in_the_pacs(stow_server, trained_run, tmp_path, film, caplog):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    server = stow_server()
    (tmp_path / "token").write_text("s3cret\n")
    token = TokenFile(str(tmp_path / "token"), "--stow-token-file")
    outbox = Outbox(tmp_path / "out" / "stow-outbox", StowSender(server.url, token), suffix=".dcm")
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", sr=True, stow_outbox=outbox)
    sent = pydicom.dcmread(io.BytesIO(film))
    with caplog.at_level(logging.DEBUG):  # even at debug level (-v) the log holds no token
        store_then_wait(node, sent, lambda: outbox.delivered == 2)
    assert outbox.delivered == 2 and outbox.waiting() == []
    assert "s3cret" not in caplog.text and PATIENT_ID not in caplog.text
    written = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, (tmp_path / "out").glob("*.dcm"))}
    received = [part for _, _, parts, _ in server.received for part in parts]
    assert sorted(ds.SOPClassUID for ds in received) == [SC, SR]  # the picture and the report, one per request
    for ds in received:
        assert ds.StudyInstanceUID == sent.StudyInstanceUID  # filed in the film's study
        assert ds.SOPInstanceUID in written  # the same object the node wrote to --out
        if ds.SOPClassUID == SC:
            assert np.array_equal(ds.pixel_array, written[ds.SOPInstanceUID].pixel_array)
    for path, headers, _, _ in server.received:
        assert path == "/dicomweb/studies" and headers["Authorization"] == "Bearer s3cret"


def _queue(tmp_path, server, film, n=1):
    outbox = Outbox(tmp_path / "stow-outbox", StowSender(server.url), suffix=".dcm")
    uids = []
    for i in range(n):
        ds = pydicom.dcmread(io.BytesIO(film))
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        outbox.put(ds.SOPInstanceUID, buffer.getvalue())
        uids.append(ds.SOPInstanceUID)
    return outbox, uids


@pytest.mark.parametrize(
    "answer, outcome",
    [
        ((202, None, 0xB000, None), "delivered"),  # stored, with elements coerced
        ((409, 0x0111, None, None), "delivered"),  # a duplicate: an earlier answer was lost
        ((409, 0xA700, None, None), "retry"),  # out of resources
        ((409, 0x0110, None, None), "retry"),  # processing failure
        ((503, None, None, None), "retry"),
        ((401, None, None, "text/html"), "retry"),
        ((409, 0xC000, None, None), "rejected"),  # cannot understand
        ((202, 0xA900, None, "application/dicom+json; charset=utf-8"), "rejected"),  # a failed instance in a 202
        ((415, None, None, "text/plain"), "rejected"),
    ],
)
def test_each_answer_of_the_pacs_is_taken_as_stow_rs_means_it(stow_server, tmp_path, film, answer, outcome, caplog):
    server = stow_server([answer])
    outbox, uids = _queue(tmp_path, server, film, n=2)
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        done = outbox.deliver()
    if outcome == "retry":  # both wait; the next pass sends the first again
        assert not done and len(outbox.waiting()) == 2 and outbox.rejected == 0
        assert f"HTTP {answer[0]}" in caplog.text
        assert outbox.deliver() and outbox.delivered == 2
        assert [parts[0].SOPInstanceUID for _, _, parts, _ in server.received] == [uids[0], uids[0], uids[1]]
        return
    assert done and outbox.waiting() == [] and outbox.delivered == (2 if outcome == "delivered" else 1)
    if outcome == "rejected":
        rejected = outbox.folder / "rejected"
        assert sorted(p.name for p in rejected.iterdir()) == sorted([f"{uids[0]}.dcm", f"{uids[0]}.answer"])
        if answer[1] is not None:
            assert f"{answer[1]:04X}H" in caplog.text
            kept = json.loads((rejected / f"{uids[0]}.answer").read_text())
            assert kept["00081198"]["Value"][0]["00081197"]["Value"] == [answer[1]]


def test_a_large_object_goes_in_one_request_with_its_length(stow_server, tmp_path):
    server = stow_server()
    pixels = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)  # 1.4 MB: past 1 MB
    big = make_dicom(tmp_path / "big.dcm", pixels).read_bytes()
    outbox, _ = _queue(tmp_path, server, big)
    assert outbox.deliver() and outbox.delivered == 1
    ((_, headers, (part,), _),) = server.received
    assert int(headers["Content-Length"]) > len(big) and "Transfer-Encoding" not in headers
    assert np.array_equal(part.pixel_array, pixels)


def test_a_pacs_away_keeps_every_object(tmp_path, film, caplog):
    closed = SimpleNamespace(url="http://127.0.0.1:9/dicomweb?key=hidden")  # nothing listens on port 9
    outbox, _ = _queue(tmp_path, closed, film)
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver()
    assert len(outbox.waiting()) == 1 and "could not be reached" in caplog.text and "hidden" not in caplog.text


def test_listen_checks_the_stow_flags_before_loading_a_model(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("a b\n")
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    cases = [
        (["--stow-token-file", str(token)], "--stow-token-file is for --stow-url"),
        (["--stow-url", "ftp://pacs.example/dicomweb"], "--stow-url: expected an http"),
        (["--stow-url", "http://pacs.example/dicomweb", "--stow-ca", str(token)], "for an https://"),
        (["--stow-url", "https://pacs.example/dicomweb", "--stow-ca", str(tmp_path / "no.pem")], "no.pem: no such"),
        (["--stow-url", "http://pacs.example/dicomweb", "--stow-token-file", str(token)], "one token"),
    ]
    assert_refused(capsys, base, cases)


def test_the_outbox_command_finds_the_stow_outbox_under_out(stow_server, tmp_path, film, capsys):
    server = stow_server([(409, 0xC000, None, None)])
    outbox, _ = _queue(tmp_path / "out", server, film, n=2)
    os.utime(outbox.waiting()[1], (1, 1))  # the second is older: it goes first and is refused
    assert outbox.deliver() and outbox.rejected == 1 and outbox.delivered == 1
    assert main(["outbox", str(tmp_path / "out")]) == 1
    assert "0 message(s) waiting" in capsys.readouterr().out
