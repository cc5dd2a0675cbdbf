"""The RIS's orders over HL7 v2 (``pneumolens.integration.hl7_orders``, ``pneumolens orders``) and the
ORU^R01 filed under them (``listen`` / ``watch --orders``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import hl7
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PATIENT_ID, assert_refused, free_port, make_certificates, make_dicom, real_images, store_then_wait
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.integration.fhir import observation
from pneumolens.integration.hl7_orders import Order, OrderBook, OrderError, parse_orders, patient_hash, serve, take
from pneumolens.integration.hl7_outbox import MllpSender, client_tls
from pneumolens.integration.hl7v2 import oru_r01

MODEL = {"name": "pneumolens-default", "version": "9.9", "sha256": "ab" * 32}
RESULT = {"probability": 0.8123, "threshold": 0.384, "flags": [], "model": MODEL}


def segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields))


def obr(placer="PL1^RIS", filler="FI1^PACS", service="CXR1^Chest 1 view^L", provider="", accession="ACC1"):
    """An OBR with OBR-2, -3, -4, -16 and -18 (placer field 1: the accession number in IHE's ORM)."""
    fields = [""] * 18
    fields[0], fields[1], fields[2], fields[3], fields[15], fields[17] = (
        "1",
        placer,
        filler,
        service,
        provider,
        accession,
    )
    return segment("OBR", *fields)


def orc(control="NW", placer="PL1^RIS", filler="FI1^PACS", provider=""):
    fields = [""] * 12
    fields[0], fields[1], fields[2], fields[11] = control, placer, filler, provider
    return segment("ORC", *fields)


def message(kind="ORM^O01", version="2.3.1", control_id="m1", *segments: str) -> str:
    msh = f"MSH|^~\\&|RIS|HOSP|PNEUMOLENS|RAD|20261207120000||{kind}|{control_id}|P|{version}"
    return "\r".join([msh, f"PID|1||{PATIENT_ID}^^^HOSP||Testperson^Alice", *segments]) + "\r"


ORM = message("ORM^O01", "2.3.1", "m1", orc(provider="1234^Smith^John"), obr())
OMI = message(
    "OMI^O23^OMI_O23",
    "2.5.1",
    "m2",
    orc("NW", "PL2", "FI2"),
    "TQ1|1",
    obr("PL2", "FI2", "CXR2^Chest 2 views^L", "5678^Who^Ann", accession="not-this"),
    "IPC|ACC2A^^^|RP2|1.2.3|SPS1",
    "IPC|ACC2B|RP2|1.2.3|SPS2",
)


def test_orders_are_read_from_orm_and_omi():
    _, (order,) = parse_orders(ORM)
    ordered = ("ACC1", "PL1^RIS", "FI1^PACS", "CXR1^Chest 1 view^L", "1234^Smith^John", "NW")
    assert order == Order(*ordered, patient=patient_hash(PATIENT_ID))  # the patient ID's hash, not the ID
    assert PATIENT_ID not in repr(order) and order.is_for(PATIENT_ID + " ") and not order.is_for("SOMEONE-ELSE")
    assert order.is_for("") and Order("A").is_for("ANYONE")  # nothing to compare: filed
    _, orders = parse_orders(OMI)  # one order per IPC, its accession number from IPC-1, not OBR-18
    assert [o.accession for o in orders] == ["ACC2A", "ACC2B"]
    assert {(o.placer, o.filler, o.service, o.provider) for o in orders} == {
        ("PL2", "FI2", "CXR2^Chest 2 views^L", "5678^Who^Ann")  # ORC-12 empty: OBR-16
    }
    two = message("ORM^O01", "2.4", "m3", orc("CA", "P3", "F3"), obr("", "", accession="A3"), orc("NW", "P4"), obr())
    _, (cancel, new) = parse_orders(two)  # two order groups in one message
    assert (cancel.accession, cancel.placer, cancel.cancelled) == ("A3", "P3", True)
    assert (new.accession, new.placer, new.filler, new.cancelled) == ("ACC1", "P4", "FI1^PACS", False)
    _, (escaped,) = parse_orders(message("ORM^O01", "2.3", "m4", orc(), obr(accession="A\\F\\1")))
    assert escaped.accession == "A|1"  # unescaped, as the DICOM header holds it
    assert parse_orders(ORM.replace("\r", "\r\n"))[1] == [order]  # segments ended by CR LF, as some senders do


def test_orders_in_other_delimiters_are_stored_in_the_standard_ones_and_answered_in_their_own(tmp_path):
    """HL7 v2.7's truncation character (``|^~\\&#``) and a site's own delimiters (``!$%?*``: field,
    component, repetition, escape, subcomponent), written by hand with the standard delimiters and
    escape sequences in their values."""
    book = OrderBook(tmp_path / "orders.db")
    own = "\r".join(
        [
            "MSH!$%?*!RIS!HOSP!PNEUMOLENS!RAD!20261207120000!!ORM$O01!m8!P!2.3.1",
            f"PID!1!!{PATIENT_ID}$$$HOSP%OTHER$$$X!!Testperson$Alice",
            "ORC!NW!PL^8$RIS!FI8*1$PACS!!!!!!!!!1234$O|Neil?T?Co$John",  # | and ^: text here
            "OBR!1!!!CXR8$Chest?S?1 view$L" + "!" * 14 + "A?F?8",  # ?S? a $ of this message, ?F? a !
        ]
    )
    _, (order,) = parse_orders(own)
    assert order == Order(
        "A!8",  # the accession number unescaped, as the DICOM header holds it
        "PL\\S\\8^RIS",  # the rest in the standard delimiters, a literal ^ escaped for them
        "FI8&1^PACS",
        "CXR8^Chest$1 view^L",
        "1234^O\\F\\Neil*Co^John",  # ?T? stood for a * of this message: text in the standard ones
        patient=patient_hash(PATIENT_ID),  # the first repetition of PID-3, as in the standard delimiters
    )
    assert parse_orders(own.replace("A?F?8", "ACC1"))[1][0].identifier("placer") == "PL^8"
    answer = take(book, own)
    assert answer.startswith("MSH!$%?*!PNEUMOLENS!RAD!RIS!HOSP!") and "\rMSA!AA!m8\r" in answer
    stored = book.find("A!8")
    assert (stored.placer, stored.provider, stored.patient) == (order.placer, order.provider, order.patient)
    refused = take(book, own.replace("A?F?8", ""))  # no accession number: AE, its ERR in this message's delimiters
    assert "\rMSA!AE!m8!" in refused and "\rERR!!OBR$1$18!101$$HL70357!E!" in refused
    v27 = ORM.replace("MSH|^~\\&|", "MSH|^~\\&#|").replace("|2.3.1\r", "|2.7\r").replace("ACC1", "ACC27")
    v27 = v27.replace("Chest 1 view", "Chest 1 vi#")  # the truncation character: the value was cut there
    _, (cut,) = parse_orders(v27)
    assert (cut.accession, cut.placer, cut.service) == ("ACC27", "PL1^RIS", "CXR1^Chest 1 vi#^L")
    answer = take(book, v27)
    assert answer.startswith("MSH|^~\\&#|PNEUMOLENS|") and "\rMSA|AA|m1\r" in answer
    assert book.find("ACC27").service == "CXR1^Chest 1 vi#^L"


@pytest.mark.parametrize("own", ["!$%?*", "|^~\\&#", "#~^/$", "|$~\\&"])
def test_recoded_values_unescape_to_the_same_text(own):
    """``recode`` against python-hl7's own reading of the message in its own delimiters: every value,
    with each delimiter of both sides as text, escape sequences of both kinds, reads the same."""
    from pneumolens.integration.hl7_delimiters import STANDARD, delimiters, recode

    e = own[3]
    values = [
        "A^B|C\\D&E~F!$%?*#/",  # text, wherever it is not one of the message's delimiters
        f"x{e}F{e}y{e}S{e}z{e}T{e}w{e}R{e}v{e}E{e}u",  # each delimiter of the message as text
        f"hex{e}X41{e} and {e}H{e}bold{e}N{e}",  # hex and formatting: copied with the other escape
    ]
    values[0] = "".join(c for c in values[0] if c not in own)
    text = "MSH" + own + own[0] + own[0].join(["RIS", "H", *values]) + "\r"
    assert delimiters(text) == own
    theirs, ours = hl7.parse(text), hl7.parse(recode(text, own))
    assert str(ours.segment("MSH")(2)) == STANDARD[1:]
    for i in range(3, 3 + len(values)):
        assert ours.unescape(str(ours.segment("MSH")(i))) == theirs.unescape(str(theirs.segment("MSH")(i)))
    assert recode(recode(text, own), STANDARD, own) == text  # and back, character for character


DELIMITER_CHARS = "|^~\\&#!$%?*/"


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=DELIMITER_CHARS + "A", min_size=0, max_size=7),
    st.lists(st.text(alphabet=DELIMITER_CHARS + "AB1 \r\n^", max_size=30), max_size=12),
)
def test_any_text_after_msh_is_answered_or_hung_up_on_never_raised(delimiters, fields):
    """Whatever follows ``MSH`` (delimiters valid or not, any mix of them in the fields), ``take``
    returns an answer python-hl7 reads, with an MSA, or "" (the listener hangs up), and the book
    takes an order only from an order message."""
    import tempfile

    text = "MSH" + delimiters + (delimiters[:1] or "|").join(fields)
    with tempfile.TemporaryDirectory() as folder:
        book = OrderBook(f"{folder}/orders.db")
        answer = take(book, text)
        code = str(hl7.parse(answer).segment("MSA")(1)) if answer else ""
        assert code in ("", "AA", "AE", "AR")
        assert len(book) == 0 or code == "AA"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from("|^~\\&#!$%?*/@"), min_size=5, max_size=6, unique=True).map("".join),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)
def test_an_accession_number_in_any_delimiters_reads_back_as_written(own, accession):
    """An ORM in any allowed delimiters, its accession number holding any printable characters
    (each of the message's delimiters written as its escape sequence, as HL7 says): the order is
    stored under that accession number, and its placer number reads back the same."""
    escape = own[3]
    written = "".join(escape + "FSRETP"[own.index(c)] + escape if c in own else c for c in accession)
    fields = ["ORC", "NW", written] + [""] * 9
    obr = ["OBR", "1", written, "", "CXR"] + [""] * 13 + [written]
    text = "\r".join(
        own[0].join(segment)
        for segment in (
            ["MSH", own[1:], "RIS", "H", "P", "R", "2026", "", f"ORM{own[1]}O01", "c1", "P", "2.3"],
            ["PID", "1", "", "X"],
            fields,
            obr,
        )
    )
    _, (order,) = parse_orders(text)
    assert order.accession == accession.strip() and order.identifier("placer") == accession.strip()


@pytest.mark.parametrize(
    "field, text, accessions",
    [
        ("OBR-3", ORM, ["FI1"]),  # the filler order number as the accession number, its namespace left out
        ("ORC-2", ORM, ["PL1"]),
        ("OBR-18", OMI, ["not-this"]),  # the one field named, IPC segments or not
        ("IPC-1", OMI, ["ACC2A", "ACC2B"]),
    ],
)
def test_a_site_names_the_field_that_holds_the_accession_number(tmp_path, field, text, accessions):
    assert [o.accession for o in parse_orders(text, field)[1]] == accessions
    book = OrderBook(tmp_path / "orders.db")
    assert str(hl7.parse(take(book, text, field)).segment("MSA")(1)) == "AA"
    assert all(book.find(a) is not None for a in accessions)
    with pytest.raises(OrderError, match="no accession number in OBR-3") as e:
        parse_orders(message("ORM^O01", "2.3", "x", orc(filler=""), obr(filler="")), "OBR-3")
    assert e.value.where == "OBR^1^3"
    with pytest.raises(OrderError, match=r"no accession number in IPC-1 \(no IPC segment\)"):
        parse_orders(ORM, "IPC-1")


@pytest.mark.parametrize(
    "text, code, where, words",
    [
        (message("ADT^A01", "2.5", "x", "PV1|1"), "AR", "MSH^1^9", "ADT^A01 is not an order message"),
        ("MSH|^~\\^|RIS|H|P|R|2026||ORM^O01|x|P|2.3\rORC|NW\r", "AR", "MSH^1^2", "must be distinct characters"),
        ("MSH|^~|RIS|H|P|R|2026||ORM^O01|x|P|2.3\rORC|NW\r", "AR", "MSH^1^2", "MSH-2 holds 2 encoding characters"),
        (message("ORM^O01", "2.3", "x", orc(), obr(accession="")), "AE", "OBR^1^18", "no accession number in OBR-18"),
        (
            message("OMI^O23", "2.5", "x", orc(), obr(), "IPC|A1", "IPC||RP"),
            "AE",
            "IPC^2^1",
            "OBR 1: no accession number in IPC-1",
        ),
        (message("ORM^O01", "2.3", "x", obr()), "AE", "ORC", "has no ORC before it"),
        (message("ORM^O01", "2.3", "x", orc()), "AE", "OBR", "without an OBR segment"),
    ],
)
def test_a_message_without_a_usable_order_is_answered_with_the_field(tmp_path, text, code, where, words):
    with pytest.raises(OrderError, match=words.replace("^", r"\^")) as e:
        parse_orders(text)
    assert (e.value.code, e.value.where) == (code, where)
    book = OrderBook(tmp_path / "orders.db")
    answer = hl7.parse(take(book, text))
    assert str(answer.segment("MSA")(1)) == code and str(answer.segment("MSA")(2)) == "x"
    assert str(answer.segment("ERR")(2)) == where and str(answer.segment("ERR")(4)) == "E"
    assert len(book) == 0  # nothing half-stored
    assert take(book, "not HL7 at all") == ""  # no MSH to answer: the listener hangs up


def test_an_order_the_book_cannot_store_is_answered_ae_so_the_ris_sends_it_again(tmp_path, monkeypatch, caplog):
    import sqlite3

    book = OrderBook(tmp_path / "orders.db")

    def full(orders, now=None):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(book, "put", full)
    with caplog.at_level("ERROR", logger="pneumolens.integration.hl7_orders"):
        answer = hl7.parse(take(book, ORM))
    assert str(answer.segment("MSA")(1)) == "AE" and str(answer.segment("ERR")(3)(1)(1)) == "207"
    assert "could not store it (OperationalError)" in caplog.text and len(book) == 0
    monkeypatch.undo()  # the disk has room again: the resend is taken
    assert str(hl7.parse(take(book, ORM)).segment("MSA")(1)) == "AA" and book.find("ACC1") is not None


def test_the_book_keeps_the_latest_order_per_accession_number_and_drops_old_ones(tmp_path):
    book = OrderBook(tmp_path / "orders.db", keep_days=30)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    book.put([Order("OLD", "p0")], now - timedelta(days=40))
    book.put([Order("ACC1", "p1"), Order("ACC2", "p2")], now - timedelta(days=15))
    assert book.find("OLD") is not None  # 25 days old then: dropped only as orders come 30 days after it
    book.put([Order("ACC1", "p1b", control="XO")], now)  # a changed order replaces the first
    assert book.find("OLD") is None and len(book) == 2
    assert (book.find(" ACC1 ").placer, book.find("ACC1").control) == ("p1b", "XO")  # DICOM pads with spaces
    assert book.find("") is None and book.find("ACC9") is None
    assert OrderBook(tmp_path / "orders.db").find("ACC2").placer == "p2"  # on disk, for another process
    (tmp_path / "junk.db").write_text("not a database, " * 100)
    with pytest.raises(ValueError, match="junk.db: cannot open it as an order book"):
        OrderBook(tmp_path / "junk.db")


def test_the_oru_goes_under_the_order_and_says_when_it_was_cancelled():
    ds = pydicom.Dataset()
    ds.PatientID, ds.AccessionNumber = PATIENT_ID, "ACC1"
    _, (order,) = parse_orders(ORM)
    msg = hl7.parse(oru_r01(RESULT, ds, "RIS", order=order))
    orc_, obr_ = msg.segment("ORC"), msg.segment("OBR")
    assert [str(orc_(i)) for i in (1, 2, 3, 12)] == ["RE", "PL1^RIS", "FI1^PACS", "1234^Smith^John"]
    assert [str(obr_(i)) for i in (2, 3, 4, 16, 18)] == [
        "PL1^RIS",
        "FI1^PACS",
        "CXR1^Chest 1 view^L",
        "1234^Smith^John",
        "ACC1",
    ]
    assert str(obr_(25)) == "P" and str(msg.segment("PID")(3)) == PATIENT_ID  # the rest as without an order
    notes = {str(s(3)(1)(1)): str(s(5)) for s in msg.segments("OBX")}["PNLNOTE"]
    assert "cancelled" not in notes
    cancelled = hl7.parse(oru_r01(RESULT, ds, order=Order("ACC1", "PL1", control="CA")))
    obx = {str(s(3)(1)(1)): str(s(5)) for s in cancelled.segments("OBX")}
    assert "cancelled or discontinued this order (ORC-1 CA)" in obx["PNLNOTE"]
    assert str(cancelled.segment("OBR")(3)) == "ACC1"  # no filler number in the order: the accession number
    ds.PatientID = "SOMEONE-ELSE"  # the film's accession number is another patient's order
    other = hl7.parse(oru_r01(RESULT, ds, order=order))
    assert [str(other.segment("ORC")(i)) for i in (2, 3)] == ["", "ACC1"]  # not filed under it
    obx = {str(s(3)(1)(1)): str(s(5)) for s in other.segments("OBX")}
    assert "order of this accession number names another patient" in obx["PNLNOTE"]
    plain = hl7.parse(oru_r01(RESULT, ds))  # no order: as before, the accession number as filler number
    assert [str(plain.segment("ORC")(i)) for i in (2, 3)] == ["", "ACC1"]
    assert str(plain.segment("OBR")(4)) == "18748-4^Diagnostic imaging study^LN"


def test_the_fhir_resources_are_based_on_the_order_by_its_number(caplog):
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.observation import Observation

    from pneumolens.integration.fhir import transaction
    from pneumolens.integration.hl7_orders import filed_under

    _, (order,) = parse_orders(ORM)
    obs = observation(RESULT, "1.2.3", "1.2.3.4", order)
    Observation.model_validate(obs)  # a valid R4B resource
    (ref,) = obs["basedOn"]
    assert ref["type"] == "ServiceRequest" and ref["identifier"]["value"] == "PL1"  # the number, not its namespace
    assert ref["identifier"]["type"]["coding"][0]["code"] == "PLAC"
    bundle = transaction(RESULT, "1.2.3.4", "1.2.3", "1.2.3.4", Order("A", filler="F\\T\\1^PACS"))
    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:  # the Observation and the DiagnosticReport alike; no placer: the filler
        assert entry["resource"]["basedOn"][0]["identifier"]["value"] == "F&1"
        assert entry["resource"]["basedOn"][0]["identifier"]["type"]["coding"][0]["code"] == "FILL"
    assert "basedOn" not in observation(RESULT, "1.2.3", order=Order("A"))  # no number to cite
    ds = pydicom.Dataset()
    ds.PatientID = "SOMEONE-ELSE"
    with caplog.at_level("WARNING", logger="pneumolens.integration.hl7_orders"):
        assert filed_under(order, ds) is None and filed_under(order, None) is order  # a JPEG: nobody to compare
    assert "names another patient" in caplog.text and "SOMEONE" not in caplog.text and "PL1" not in caplog.text
    ds.PatientID = PATIENT_ID
    assert filed_under(order, ds) is order and filed_under(None, ds) is None


class Listener:
    """``serve`` on an event loop of its own thread."""

    def __init__(self, book: OrderBook):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(serve(book, "127.0.0.1", 0), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        async def shut():
            self.server.close()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_the_listener_acknowledges_over_mllp_once_the_orders_are_stored(tmp_path, caplog):
    book = OrderBook(tmp_path / "orders.db")
    listener = Listener(book)
    try:
        send = MllpSender("127.0.0.1", listener.port, timeout=5)
        with caplog.at_level("INFO", logger="pneumolens.integration.hl7_orders"):
            assert send(ORM.encode()).outcome == "delivered" and send(OMI.encode()).outcome == "delivered"
            no_accession = message("ORM^O01", "2.3", "m5", orc(), obr(accession="")).encode()
            assert send(no_accession).outcome == "retry"  # AE: the RIS may mend it and send it again
            refused = send(message("ADT^A01", "2.5", "m6").encode())
            assert refused.outcome == "rejected" and b"MSA|AR|m6" in refused.body
            latin = message("ORM^O01", "2.3", "m7", orc(provider="9^Müller^Jörg"), obr(accession="ACC7"))
            assert send(latin.encode("latin-1")).outcome == "delivered"  # 8859/1, not UTF-8
            v27 = message("ORM^O01", "2.7", "m8", orc(), obr(accession="ACC8")).replace("MSH|^~\\&|", "MSH|^~\\&#|")
            # v2.7's delimiters: the ACK in them, read by the project's own client (python-hl7) as AA for m8
            assert send(v27.encode()).outcome == "delivered"
            own = send(b"MSH!$%?*!RIS!HOSP!PNEUMOLENS!RAD!20261207120000!!ADT$A01!m9!P!2.5\rPID!1\r")
            assert own.outcome == "rejected" and b"\rMSA!AR!m9!" in own.body  # refused in its own delimiters
        assert book.find("ACC8").placer == "PL1^RIS"
        assert len(book) == 5 and book.find("ACC2B").placer == "PL2" and book.find("ACC7").provider == "9^Müller^Jörg"
        assert "OMI^O23: 2 order(s) stored (NW)" in caplog.text
        for value in (PATIENT_ID, "ACC1", "PL1", "Smith"):  # the log holds no value of a message
            assert value not in caplog.text
    finally:
        listener.close()


def test_orders_command_takes_orders_over_mutual_tls_and_stops_cleanly(tmp_path, capsys):
    pem = make_certificates(tmp_path)
    port, book = free_port(), tmp_path / "book" / "orders.db"
    cmd = [sys.executable, "-m", "pneumolens.cli", "orders", str(book), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--tls-cert", pem["server"], "--tls-key", pem["server_key"], "--tls-ca", pem["ca"]]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stderr.readline()]
        while "taking orders" not in lines[-1] and lines[-1] and len(lines) < 20:  # up once it says so
            lines.append(proc.stderr.readline())
        assert "taking orders on 127.0.0.1:" in lines[-1] and "(MLLP, TLS)" in lines[-1], lines
        mutual = MllpSender("127.0.0.1", port, timeout=5, tls=client_tls(pem["ca"], pem["client"], pem["client_key"]))
        assert mutual(ORM.encode()).outcome == "delivered"
        no_cert = MllpSender("127.0.0.1", port, timeout=5, tls=client_tls(pem["ca"]))
        assert no_cert(OMI.encode()).outcome == "retry"  # refused at the handshake
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=20)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped; 1 order(s)" in err
    assert OrderBook(book).find("ACC1").placer == "PL1^RIS"
    assert main(["orders", str(book), "--find", "ACC1"]) == 0  # what the node would file ACC1's result under
    shown = json.loads(capsys.readouterr().out)
    assert (shown["placer"], shown["filler"], shown["cancelled"], shown["patient_checked"]) == (
        "PL1^RIS",
        "FI1^PACS",
        False,
        True,
    )
    assert "patient" not in shown and PATIENT_ID not in json.dumps(shown)
    assert main(["orders", str(book), "--find", "ACC404"]) == 1 and "no order for" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own refusal of a field it does not offer
        main(["orders", str(tmp_path / "o.db"), "--accession-field", "PID-3"])
    assert "invalid choice: 'PID-3'" in capsys.readouterr().err
    assert_refused(
        capsys,
        ["orders", str(tmp_path / "o.db")],
        [
            (["--port", "0"], "--port 0: expected 1-65535"),
            (["--keep-days", "-1"], "--keep-days -1.0"),
            (["--tls-cert", pem["server"]], "--tls-cert and --tls-key go together"),
            (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "--tls-cert nope.pem: no such file"),
            (["--find", "ACC1"], "o.db: no such order book"),
        ],
    )


def test_the_watch_folder_files_its_oru_under_the_order(trained_run, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    gray = read_image(real_images("test", "PNEUMONIA", 1)[0])
    for name, accession in (("ordered.dcm", "ACC1"), ("unordered.dcm", "ACC404")):
        path = make_dicom(inbox / name, np.round(gray * 255).astype(np.uint8))
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = accession
        ds.save_as(path)
    book = OrderBook(tmp_path / "orders.db")
    take(book, ORM)
    _, (order,) = parse_orders(ORM)
    base = ["watch", str(inbox), "--once", "--model", str(trained_run), "--db", f"sqlite:///{tmp_path / 'a.db'}"]
    assert_refused(
        capsys, base, [(["--orders", str(tmp_path / "orders.db")], "--orders files the results of --hl7 or --fhir")]
    )
    orders = ["--orders", str(tmp_path / "orders.db")]
    assert main([*base, "--hl7", str(tmp_path / "hl7"), "--fhir", str(tmp_path / "fhir"), *orders]) == 0
    based_on = [json.loads(p.read_text()).get("basedOn") for p in sorted((tmp_path / "fhir").glob("*.json"))]
    assert sorted(map(str, based_on)) == sorted(map(str, [None, [observation(RESULT, order=order)["basedOn"][0]]]))
    messages = {}
    for path in (tmp_path / "hl7").glob("*.hl7"):
        msg = hl7.parse(path.read_bytes().decode("utf-8"))
        messages[str(msg.segment("OBR")(18))] = msg
    assert sorted(messages) == ["ACC1", "ACC404"]
    assert [str(messages["ACC1"].segment("ORC")(i)) for i in (2, 3, 12)] == ["PL1^RIS", "FI1^PACS", "1234^Smith^John"]
    assert str(messages["ACC1"].segment("OBR")(4)) == "CXR1^Chest 1 view^L"
    assert [str(messages["ACC404"].segment("ORC")(i)) for i in (2, 3)] == ["", "ACC404"]  # no order: as before


def test_the_running_node_files_its_oru_under_the_order_and_goes_on_without_a_readable_book(trained_run, tmp_path):
    from pneumolens.integration.dicom_node import Node
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    book = OrderBook(tmp_path / "orders.db")
    take(book, OMI)
    node = Node(Engine(Settings(model=str(trained_run))), None, tmp_path / "out", hl7=tmp_path / "hl7", orders=book)
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    sent = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", pixels))
    sent.AccessionNumber = "ACC2B"
    kept = tmp_path / "hl7" / f"{sent.SOPInstanceUID}.hl7"
    store_then_wait(node, sent, kept.is_file)
    msg = hl7.parse(kept.read_bytes().decode("utf-8"))
    assert [str(msg.segment("ORC")(i)) for i in (2, 3, 12)] == ["PL2", "FI2", "5678^Who^Ann"]
    assert [str(msg.segment("OBR")(i)) for i in (4, 18)] == ["CXR2^Chest 2 views^L", "ACC2B"]
    (tmp_path / "orders.db").unlink()  # the book gone (a share unmounted): the result still goes, without it
    (tmp_path / "orders.db").mkdir()
    kept.unlink()
    store_then_wait(node, sent, kept.is_file)
    assert [str(hl7.parse(kept.read_bytes().decode("utf-8")).segment("ORC")(i)) for i in (2, 3)] == ["", "ACC2B"]


def test_the_api_answers_under_the_order_and_serve_refuses_a_book_it_cannot_open(trained_run, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    book = OrderBook(tmp_path / "orders.db")
    take(book, ORM)
    path = make_dicom(
        tmp_path / "x.dcm", np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    )
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = "ACC1"
    ds.save_as(path)
    settings = Settings(model=str(trained_run), audit=False, orders=str(tmp_path / "orders.db"))
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/predict?explain=false&format=hl7", files={"file": ("x.dcm", path.read_bytes())})
    assert r.status_code == 200
    msg = hl7.parse(r.text)
    assert [str(msg.segment("ORC")(i)) for i in (2, 3)] == ["PL1^RIS", "FI1^PACS"]
    assert str(msg.segment("PID")(3)) == PATIENT_ID  # the patient from the upload, the order from the book
    (tmp_path / "junk.db").write_text("not a database, " * 100)
    assert main(["serve", "--orders", str(tmp_path / "junk.db"), "--model", str(trained_run)]) == 2
    assert "junk.db: cannot open it as an order book" in capsys.readouterr().err
