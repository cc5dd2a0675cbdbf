"""A first read as an HL7 v2 ORU^R01 message (``pneumolens.integration.hl7v2``) and its store and forward to a
RIS over MLLP (``pneumolens.integration.hl7_outbox``, ``listen --hl7 DIR --hl7-to``), against a stand-in MLLP
listener built with python-hl7."""

from __future__ import annotations

import asyncio
import logging
import threading

import hl7
import numpy as np
import pydicom
import pytest
from hl7.mllp import start_hl7_server

from conftest import (
    PATIENT_ID,
    PATIENT_NAME,
    assert_refused,
    free_port,
    make_certificates,
    make_dicom,
    real_images,
    store_then_wait,
)
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.integration.hl7_outbox import MllpSender, client_tls
from pneumolens.integration.hl7v2 import oru_r01
from pneumolens.integration.outbox import Outbox

MODEL = {"name": "pneumolens-default", "version": "9.9", "sha256": "ab" * 32}


def header(**values) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_the_message_files_the_call_under_the_patient_and_the_order():
    ds = header(
        PatientID="P|7^1",
        IssuerOfPatientID="HOSP",
        PatientName="Παπαδόπουλος^Ελένη^^Dr",
        PatientBirthDate="20190304",
        PatientSex="F",
        AccessionNumber="ACC&42",
        StudyDate="20261206",
        StudyTime="101502.25",
        StudyInstanceUID="1.2.3",
        SOPInstanceUID="1.2.3.4",
    )
    result = {"probability": 0.8123, "threshold": 0.384, "flags": ["grey_lungs"], "model": MODEL}
    text = oru_r01(result, ds, "RIS^RADIOLOGY", control_id="c1")
    msg = hl7.parse(text)  # python-hl7 reads it back
    msh, pid, obr = msg.segment("MSH"), msg.segment("PID"), msg.segment("OBR")
    assert str(msh(9)) == "ORU^R01^ORU_R01" and str(msh(10)) == "c1" and str(msh(12)) == "2.5.1"
    assert (str(msh(5)), str(msh(6)), str(msh(18))) == ("RIS", "RADIOLOGY", "UNICODE UTF-8")
    assert msg.unescape(str(pid(3)(1)(1))) == "P|7^1" and str(pid(3)(1)(4)) == "HOSP"  # separators escaped
    name = pid(5)(1)
    assert [str(name(i)) for i in (1, 2, 5)] == ["Παπαδόπουλος", "Ελένη", "Dr"]  # UTF-8, prefix in XPN.5
    assert (str(pid(7)), str(pid(8))) == ("20190304", "F")
    assert msg.unescape(str(obr(3))) == "ACC&42" and str(obr(7)) == "20261206101502" and str(obr(25)) == "P"
    orc = msg.segment("ORC")
    assert str(orc(1)) == "RE" and msg.unescape(str(orc(3))) == "ACC&42"  # the order the results are for
    assert [str(segment[0]) for segment in msg][:4] == ["MSH", "PID", "ORC", "OBR"]  # ORU^R01's order
    obx = {str(s(3)(1)(1)): s for s in msg.segments("OBX")}
    assert str(obx["PNLCALL"](5)) == "pneumonia suspected" and str(obx["PNLCALL"](8)) == "A"
    assert str(obx["PNLPROB"](5)) == "0.8123" and str(obx["PNLPROB"](7)) == "<0.3840" and str(obx["PNLPROB"](8)) == "A"
    assert "not a diagnosis" in str(obx["PNLNOTE"](5)) and "grey_lungs" in str(obx["PNLNOTE"](5))
    assert "sha256:abababababab" in str(obx["PNLMODEL"](5))
    assert str(obx["110180"](5)) == "1.2.3" and str(obx["PNLIMAGE"](5)) == "1.2.3.4"
    assert all(str(s(11)) == "P" for s in msg.segments("OBX"))  # every observation preliminary

    negative = hl7.parse(oru_r01({**result, "probability": 0.1}, header(PatientBirthDate="2019-03-04")))
    obx = {str(s(3)(1)(1)): s for s in negative.segments("OBX")}
    assert str(obx["PNLCALL"](5)) == "no pneumonia suspected" and str(obx["PNLCALL"](8)) == "N"
    assert str(negative.segment("PID")(7)) == "" and str(negative.segment("PID")(8)) == "U"  # malformed date left out
    assert "110180" not in obx and str(negative.segment("MSH")(10))  # no study known; a control ID made up
    assert hl7.parse(oru_r01(result)).segment("OBR")  # a JPEG: no header at all, still a message


class Ris:
    """A stand-in MLLP listener: answers each message with the next of ``codes`` (then AA), keeping
    what it received; ``silent`` never answers; ``other`` acknowledges another control ID."""

    def __init__(self, codes=(), silent=False, other=False, tls=None):
        self.codes, self.received = list(codes), []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def handle(reader, writer):
            try:
                while not reader.at_eof():
                    message = await reader.readmessage()
                    self.received.append(message)
                    if silent:
                        await asyncio.sleep(5)
                        continue
                    ack = message.create_ack(self.codes.pop(0) if self.codes else "AA")
                    if other:  # an ACK, but of another message
                        ack = hl7.parse(str(ack).replace(f"|{message.segment('MSH')(10)}", "|someone-else"))
                    writer.writemessage(ack)
                    await writer.drain()
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - the client hung up, or the test ends
                pass
            finally:
                writer.close()

        serving = start_hl7_server(handle, "127.0.0.1", 0, ssl=tls)
        self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        async def shut():
            self.server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:  # a silent handler still sleeping
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def ris():
    made = []

    def make(**kwargs):
        made.append(Ris(**kwargs))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


RESULT = {"probability": 0.8, "threshold": 0.4, "flags": [], "model": MODEL}
PATIENT = header(PatientID=PATIENT_ID, PatientName=PATIENT_NAME, AccessionNumber="A1")


def test_the_ris_acknowledges_and_the_message_leaves_the_outbox(ris, tmp_path, caplog):
    listener = ris(codes=["AE"])
    outbox = Outbox(tmp_path / "outbox", MllpSender("127.0.0.1", listener.port), suffix=".hl7")
    outbox.put("1.1", oru_r01(RESULT, PATIENT, control_id="m1").encode())
    outbox.put("1.2", oru_r01(RESULT, PATIENT, control_id="m2").encode())
    with caplog.at_level(logging.INFO, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver() and len(outbox.waiting()) == 2  # AE: an error at the RIS, try again later
        assert outbox.deliver() and outbox.waiting() == [] and outbox.delivered == 2
    assert [str(m.segment("MSH")(10)) for m in listener.received] == ["m1", "m1", "m2"]  # resent as it was
    assert "answered AE" in caplog.text and "2 message(s) delivered" in caplog.text
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text  # the log quotes no value


def test_a_rejected_message_is_kept_aside_with_the_ack(ris, tmp_path):
    listener = ris(codes=["AR"])
    outbox = Outbox(tmp_path / "outbox", MllpSender("127.0.0.1", listener.port), suffix=".hl7")
    outbox.put("2.1", oru_r01(RESULT, PATIENT, control_id="r1").encode())
    outbox.put("2.2", oru_r01(RESULT, PATIENT, control_id="r2").encode())
    assert outbox.deliver() and outbox.rejected == 1 and outbox.delivered == 1
    rejected = tmp_path / "outbox" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == ["2.1.answer", "2.1.hl7"]
    assert "MSA|AR|r1" in (rejected / "2.1.answer").read_text()


@pytest.mark.parametrize(
    "kwargs, why", [({"silent": True}, "did not answer"), ({"other": True}, "acknowledged another message")]
)
def test_no_answer_or_a_stray_ack_keeps_the_message(ris, tmp_path, caplog, kwargs, why):
    listener = ris(**kwargs)
    sender = MllpSender("127.0.0.1", listener.port, timeout=0.5)
    outbox = Outbox(tmp_path / "outbox", sender, suffix=".hl7")
    outbox.put("3.1", oru_r01(RESULT, PATIENT).encode())
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver()
    assert len(outbox.waiting()) == 1 and why in caplog.text


def test_a_closed_port_keeps_the_message(tmp_path, caplog):
    outbox = Outbox(tmp_path / "outbox", MllpSender("127.0.0.1", free_port()), suffix=".hl7")
    outbox.put("4.1", oru_r01(RESULT, PATIENT).encode())
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        assert not outbox.deliver()
    assert len(outbox.waiting()) == 1 and "could not be reached" in caplog.text


def test_the_running_node_sends_each_result_to_the_ris(ris, trained_run, tmp_path, caplog):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    listener = ris()
    outbox = Outbox(tmp_path / "hl7" / "outbox", MllpSender("127.0.0.1", listener.port), suffix=".hl7")
    node = Node(
        Engine(Settings(model=str(trained_run))),
        None,
        tmp_path / "out",
        hl7=tmp_path / "hl7",
        hl7_outbox=outbox,
        hl7_receiver="RIS^HOSP",
    )
    pixels = np.round(read_image(real_images("test", "PNEUMONIA", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    with caplog.at_level(logging.INFO):
        store_then_wait(node, sent, lambda: outbox.delivered)
    assert outbox.delivered == 1 and outbox.waiting() == []
    kept = (tmp_path / "hl7" / f"{sent.SOPInstanceUID}.hl7").read_bytes()  # the node's copy for the RIS's folder
    (received,) = listener.received
    assert str(received) == kept.decode()
    assert str(received.segment("PID")(3)) == PATIENT_ID and str(received.segment("MSH")(5)) == "RIS"
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text


def test_listen_checks_the_hl7_flags_before_loading_a_model(tmp_path, capsys):
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    cases = [
        (["--hl7-to", "RIS@ris.example:2575"], "--hl7-to needs --hl7 DIR"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "ris.example"], "expected [APP[^FACILITY]@]HOST:PORT"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "R|S@ris.example:2575"], "expected [APP"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "ris.example:99999"], "expected [APP"),
        (["--hl7", str(tmp_path / "h"), "--hl7-tls"], "--hl7-tls needs --hl7-to"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "r:1", "--hl7-tls-ca", "x.pem"], "need --hl7-tls"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "r:1", "--hl7-tls", "--hl7-tls-cert", "c.pem"], "together"),
        (["--hl7", str(tmp_path / "h"), "--hl7-to", "r:1", "--hl7-tls", "--hl7-tls-ca", "nope.pem"], "nope.pem"),
    ]
    assert_refused(capsys, base, cases)


def test_mllp_over_mutual_tls(ris, tmp_path, caplog):
    import ssl

    pem = make_certificates(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pem["ca"])
    server.load_cert_chain(pem["server"], pem["server_key"])
    server.verify_mode = ssl.CERT_REQUIRED  # the RIS lets in only clients its CA signed
    listener = ris(tls=server)

    def outbox(name: str, tls) -> Outbox:
        box = Outbox(tmp_path / name, MllpSender("127.0.0.1", listener.port, timeout=2, tls=tls), suffix=".hl7")
        box.put("6.1", oru_r01(RESULT, PATIENT).encode())
        return box

    assert outbox("mutual", client_tls(pem["ca"], pem["client"], pem["client_key"])).deliver()
    assert len(listener.received) == 1
    with caplog.at_level(logging.WARNING, logger="pneumolens.integration.outbox"):
        for name, tls in (("no-cert", client_tls(pem["ca"])), ("plain", None), ("system-cas", client_tls())):
            box = outbox(name, tls)  # refused at the handshake, or the RIS's certificate not trusted
            assert not box.deliver() and len(box.waiting()) == 1, name
    assert len(listener.received) == 1 and "could not be reached" in caplog.text
    with pytest.raises(ValueError, match="--hl7-tls-ca"):
        client_tls(pem["client_key"])  # a key is no CA
    with pytest.raises(ValueError, match="--hl7-tls-cert"):
        client_tls(pem["ca"], pem["client"], pem["server_key"])  # a key of another certificate


def test_the_api_answers_with_an_oru_message(trained_run, tmp_path):
    from fastapi.testclient import TestClient

    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    gray = read_image(real_images("test", "NORMAL", 1)[0])
    path = make_dicom(tmp_path / "x.dcm", np.round(gray * 255).astype(np.uint8))
    data, jpeg = path.read_bytes(), real_images("test", "NORMAL", 1)[0].read_bytes()
    with TestClient(create_app(Settings(model=str(trained_run), audit=False))) as client:
        plain = client.post("/api/v1/predict?explain=false", files={"file": ("x.dcm", data)}).json()
        r = client.post("/api/v1/predict?explain=false&format=hl7", files={"file": ("x.dcm", data)})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/hl7-v2")
        msg = hl7.parse(r.text)
        obx = {str(s(3)(1)(1)): s for s in msg.segments("OBX")}
        assert float(str(obx["PNLPROB"](5))) == pytest.approx(plain["probability"], abs=1e-4)
        assert str(obx["PNLCALL"](8)) == ("A" if plain["label"] == "PNEUMONIA" else "N")
        assert str(msg.segment("PID")(3)) == PATIENT_ID  # the patient from the upload's own header
        r = client.post("/api/v1/predict?explain=false&format=hl7", files={"file": ("x.jpeg", jpeg)})
        assert r.status_code == 200 and str(hl7.parse(r.text).segment("PID")(3)) == ""  # a JPEG names nobody


def test_the_watch_folder_sends_a_dicom_file_s_result_on_and_not_a_jpeg_s(ris, trained_run, tmp_path, capsys):
    from test_fhir_outbox import FhirServer

    listener, server = ris(), FhirServer()
    try:
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        gray = read_image(real_images("test", "PNEUMONIA", 1)[0])
        sent = pydicom.dcmread(make_dicom(inbox / "x.dcm", np.round(gray * 255).astype(np.uint8)))
        (inbox / "y.jpeg").write_bytes(real_images("test", "NORMAL", 1)[0].read_bytes())
        args = ["watch", str(inbox), "--once", "--model", str(trained_run), "--db", f"sqlite:///{tmp_path / 'a.db'}"]
        args += ["--hl7", str(tmp_path / "hl7"), "--hl7-to", f"RIS@127.0.0.1:{listener.port}"]
        args += ["--fhir", str(tmp_path / "fhir"), "--fhir-url", server.url]
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "processed 2 new file(s)" in err and "HL7: 1 delivered" in err and "FHIR: 1 delivered" in err
        (message,) = listener.received  # the DICOM file's, not the JPEG's
        assert str(message.segment("PID")(3)) == PATIENT_ID
        assert [p.name for p in (tmp_path / "hl7").glob("*.hl7")] == [f"{sent.SOPInstanceUID}.hl7"]
        assert [p.name for p in (tmp_path / "fhir").glob("*.json")] == [f"{sent.SOPInstanceUID}.json"]
        assert main(args) == 0 and len(listener.received) == 1 and len(server.received) == 1  # done: not again
    finally:
        server.close()
