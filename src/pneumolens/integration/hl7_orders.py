"""Orders from the RIS over HL7 v2 (``pneumolens orders``), so that a result goes back under its order.

A RIS announces each imaging order before the film is taken: ORM^O01 (HL7 v2.3-2.4) or OMI^O23 /
OMG^O19 (v2.5 on). ``orders`` listens for them over MLLP and keeps, per accession number, what a
RIS needs to file the result under the order: the placer and filler order numbers (``ORC-2``,
``ORC-3``, else ``OBR-2``, ``OBR-3``), the ordered procedure (``OBR-4``) and the ordering
provider (``ORC-12``, else ``OBR-16``). ``listen``, ``watch`` and ``serve --orders`` then write
each ORU^R01 with those values (``pneumolens.integration.hl7v2``), and cite the order in the FHIR
resources' ``basedOn`` (``pneumolens.integration.fhir``), for the image whose DICOM Accession
Number matches. The accession number is ``IPC-1`` of OMI (one order per ``IPC``
segment), else ``OBR-18`` (placer field 1, as the IHE Scheduled Workflow profile sends it in
ORM), or the one field a site names (``ACCESSION_FIELDS``: ``OBR-3`` where the filler order number
is the accession number, as many RISs have it).

Each message is answered once its orders are stored (nothing is acknowledged and then lost):
``AA``; ``AE`` with an ``ERR`` segment naming the missing field (a resend after the RIS mends it
goes through); ``AR`` for a message that is not an order or not HL7 at all. A cancel or
discontinue (``ORC-1`` ``CA``, ``OC``, ``DC``, ``OD``, ``CR``, ``DR``) is kept as such: the result is
still filed under the order, with a note that the RIS cancelled it. No patient identifier is
stored (the ORU takes the patient from the image's header): only a SHA-256 hash of the order's
patient ID (``PID-3``), so that an image of another patient under the same accession number is not
filed under the order (its results go without it, and the ORU says why). The hash keeps the ID out
of sight; it does not anonymise it (whoever can list candidate IDs can match them). Nothing of a
message is logged but its type and order-control codes. Values are kept as the RIS wrote them (HL7 escapes
included), the first of any repetition, in the encoding characters ``^~\\&``: a message written with
others (v2.7's truncation character ``^~\\&#``, or a site's own) is re-written with those first, and
answered in its own (``pneumolens.integration.hl7_delimiters``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hl7
from hl7.mllp import start_hl7_server

from pneumolens.integration.hl7_delimiters import STANDARD, delimiters, header_only, recode

log = logging.getLogger(__name__)

ORDER_TYPES = ("ORM^O01", "OMI^O23", "OMG^O19")
CANCELLED = frozenset({"CA", "OC", "DC", "OD", "CR", "DR"})  # HL7 table 0119: cancel / discontinue
# where the accession number may be: auto is IPC-1 (one order per IPC), else OBR-18 (IHE)
ACCESSION_FIELDS = ("auto", "IPC-1", "OBR-18", "OBR-3", "OBR-2", "ORC-3", "ORC-2")


@dataclass(frozen=True)
class Order:
    """One requested procedure, by the accession number its images will carry (values in ER7)."""

    accession: str
    placer: str = ""  # placer order number (EI)
    filler: str = ""  # filler order number (EI)
    service: str = ""  # universal service identifier (CWE): the procedure ordered
    provider: str = ""  # ordering provider (XCN)
    control: str = "NW"  # order control (ORC-1)
    received: str = ""  # when it was stored, ISO 8601 UTC
    patient: str = ""  # patient_hash of the order's patient ID ("" when the message gave none)

    @property
    def cancelled(self) -> bool:
        return self.control in CANCELLED

    def identifier(self, kind: str) -> str:
        """The ``placer`` or ``filler`` order number itself (the EI's first component, unescaped)."""
        return _first_component(getattr(self, kind))

    def is_for(self, patient_id: str) -> bool:
        """Whether an image of ``patient_id`` (its DICOM Patient ID) may be filed under this order: the
        same patient, or no ID on one side to compare."""
        return not (self.patient and patient_id.strip()) or patient_hash(patient_id) == self.patient


def patient_hash(patient_id: str) -> str:
    """What the order book keeps of a patient ID: enough to compare, not the ID."""
    return hashlib.sha256(patient_id.strip().encode("utf-8")).hexdigest()[:32]


class OrderError(ValueError):
    """A message that gives no order: ``code`` is the ACK code (AE or AR), ``where`` the field
    (``OBR^1^18``, HL7's ERL) and ``hl7_code`` the HL7 table 0357 error code."""

    def __init__(self, message: str, code: str = "AE", where: str = "", hl7_code: str = "101") -> None:
        super().__init__(message)
        self.code, self.where, self.hl7_code = code, where, hl7_code


def _field(segment: hl7.Segment, n: int) -> str:
    """Field ``n`` of ``segment`` as written (ER7), its first repetition, "" when absent."""
    try:
        return str(segment(n)).split("~")[0].strip()
    except (IndexError, KeyError):
        return ""


_ER7 = hl7.parse(f"MSH{STANDARD}|PNEUMOLENS")  # unescapes with the encoding characters values are kept in


def _first_component(value: str, message: hl7.Message = _ER7) -> str:
    """The identifier of an EI value (its first component), unescaped: what a DICOM header holds."""
    return message.unescape(value.split("^")[0]).strip()


def _er7(text: str) -> str:
    """Segments ended by CR, as HL7 wants, from a sender that ends them by CR LF or LF."""
    return text.replace("\r\n", "\r").replace("\n", "\r")


def message_type(message: hl7.Message) -> str:
    """MSH-9's message code and trigger event (``OMI^O23``)."""
    parts = _field(message.segment("MSH"), 9).split("^")
    return "^".join((parts + [""])[:2])


def parse_orders(text: str, accession: str = "auto") -> tuple[hl7.Message, list[Order]]:
    """The orders of one ORM^O01, OMI^O23 or OMG^O19 message (ER7 text), the accession number read
    from the field ``accession`` names (``ACCESSION_FIELDS``).

    Raises:
        OrderError: not HL7, not an order message, delimiters HL7 does not allow (AR); an order group
            without an accession number or without ORC (AE, naming the field).
    """
    text = _er7(text)
    try:
        text = recode(text, delimiters(text))
    except ValueError as e:
        if text.startswith("MSH"):
            raise OrderError(str(e), "AR", "MSH^1^2", "102") from None
        raise OrderError("not an HL7 v2 message", "AR", "MSH", "100") from None
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception:  # noqa: BLE001 - python-hl7 raises several kinds on text that is not HL7
        raise OrderError("not an HL7 v2 message", "AR", "MSH", "100") from None
    kind = message_type(message)
    if kind not in ORDER_TYPES:
        raise OrderError(f"{kind} is not an order message ({', '.join(ORDER_TYPES)})", "AR", "MSH^1^9", "200")
    orders, orc, obr, ipcs, seen = [], None, None, [], {"ORC": 0, "OBR": 0, "IPC": 0}
    try:
        patient_id = _first_component(_field(message.segment("PID"), 3), message)
    except KeyError:  # no PID segment
        patient_id = ""
    patient = patient_hash(patient_id) if patient_id else ""

    def close_group() -> None:
        if obr is None:
            return
        if orc is None:
            raise OrderError(f"OBR {seen['OBR']} has no ORC before it", "AE", "ORC", "100")
        if accession == "auto":
            name, n = ("IPC", 1) if ipcs else ("OBR", 18)
        else:
            name, number = accession.split("-")
            n = int(number)
        # (ERL: the segment, its occurrence in the message, the field; the field's name; its value)
        if name == "IPC":
            found = [(f"IPC^{i}^1", "IPC-1", _first_component(_field(ipc, 1), message)) for i, ipc in ipcs]
            found = found or [(f"IPC^{seen['IPC'] + 1}^1", "IPC-1 (no IPC segment)", "")]
        else:
            holder, count = (obr, seen["OBR"]) if name == "OBR" else (orc, seen["ORC"])
            found = [(f"{name}^{count}^{n}", f"{name}-{n}", _first_component(_field(holder, n), message))]
        for where, field, value in found:
            if not value:
                raise OrderError(f"OBR {seen['OBR']}: no accession number in {field}", "AE", where)
        for _, _, value in found:
            orders.append(
                Order(
                    value,
                    placer=_field(orc, 2) or _field(obr, 2),
                    filler=_field(orc, 3) or _field(obr, 3),
                    service=_field(obr, 4),
                    provider=_field(orc, 12) or _field(obr, 16),
                    control=_field(orc, 1).upper() or "NW",
                    patient=patient,
                )
            )

    for segment in message:
        name = str(segment[0])
        if name in ("ORC", "OBR"):
            close_group()
            seen[name] += 1
            if name == "ORC":
                orc, obr = segment, None
            else:
                obr = segment
            ipcs = []
        elif name == "IPC":
            seen["IPC"] += 1
            ipcs.append((seen["IPC"], segment))
    close_group()
    if not orders:
        raise OrderError(f"{kind} without an OBR segment: no procedure ordered", "AE", "OBR", "100")
    return message, orders


def ack(message: hl7.Message, error: OrderError | None = None) -> str:
    """The ACK of ``message``: AA, or ``error``'s code with its text (MSA-3) and an ERR segment."""
    if error is None:
        return str(message.create_ack("AA", application="PNEUMOLENS"))
    answer = str(message.create_ack(error.code, application="PNEUMOLENS"))
    text = str(error).replace("|", "/").replace("^", " ").replace("~", " ").replace("\\", "/").replace("&", "+")
    answer = answer.rstrip("\r") + f"|{text}\r"  # MSA-3, read by receivers of v2.3-2.4
    return answer + f"ERR||{error.where}|{error.hl7_code}^^HL70357|E||||{text}\r"


class OrderBook:
    """The orders received, in SQLite (WAL: the node and the watch folder read while ``orders`` writes).
    Orders received more than ``keep_days`` ago are dropped as new ones come."""

    def __init__(self, path: str | Path, keep_days: float | None = 90.0) -> None:
        self.path, self.keep_days = Path(path), keep_days
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS orders (accession TEXT PRIMARY KEY, placer TEXT, filler TEXT, "
                    "service TEXT, provider TEXT, control TEXT, received TEXT, patient TEXT)"
                )
        except sqlite3.Error as e:
            raise ValueError(f"{self.path}: cannot open it as an order book ({e})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:  # one transaction, committed on exit
            yield db

    def put(self, orders: list[Order], now: datetime | None = None) -> None:
        """Store ``orders`` (all or none), each replacing an earlier one of its accession number."""
        now = now or datetime.now(UTC)
        rows = [
            (
                o.accession,
                o.placer,
                o.filler,
                o.service,
                o.provider,
                o.control,
                now.isoformat(timespec="seconds"),
                o.patient,
            )
            for o in orders
        ]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if self.keep_days is not None:
                oldest = (now - timedelta(days=self.keep_days)).isoformat(timespec="seconds")
                db.execute("DELETE FROM orders WHERE received < ?", (oldest,))

    def find(self, accession: str) -> Order | None:
        """The order of ``accession`` (a DICOM Accession Number), None when none came."""
        if not accession.strip():
            return None
        with self._connect() as db:
            row = db.execute("SELECT * FROM orders WHERE accession = ?", (accession.strip(),)).fetchone()
        return Order(*row) if row else None

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM orders").fetchone()[0])


def order_for(book: OrderBook | None, header) -> Order | None:
    """The order of a DICOM ``header``'s accession number in ``book``; None without a book, an
    accession number or an order, or when the book cannot be read (logged: the result then goes
    without its order rather than not at all)."""
    if book is None or header is None:
        return None
    try:
        return book.find(str(header.get("AccessionNumber", "") or ""))
    except (sqlite3.Error, OSError) as e:
        log.warning("the order book %s could not be read (%s): the result goes without its order", book.path, e)
        return None


def filed_under(order: Order | None, header) -> Order | None:
    """``order``, unless it names another patient than the DICOM ``header`` (then None, and a warning
    that names no value)."""
    patient_id = str(header.get("PatientID", "") or "") if header is not None else ""
    if order is not None and not order.is_for(patient_id):  # a wrong accession number typed, a merged patient
        log.warning("the RIS's order of an image's accession number names another patient: not filed under it")
        return None
    return order


def take(book: OrderBook, text: str, accession: str = "auto") -> str:
    """Read one message, store its orders and return the ACK to send (never raises on its content),
    in the message's own delimiters; ``accession``: where the accession number is (``parse_orders``)."""
    text = _er7(text)
    try:
        sender: str | None = delimiters(text)
    except ValueError:  # delimiters HL7 does not allow: answered from MSH alone, in the standard ones
        sender = None
    try:
        message, orders = parse_orders(text, accession)
    except OrderError as e:
        log.warning("order message refused (%s): %s", e.code, e)
        try:
            readable = recode(text, sender) if sender else header_only(text)
            return recode(ack(hl7.parse(readable), e), STANDARD, sender or STANDARD)
        except Exception:  # noqa: BLE001 - not HL7 at all: there is no MSH to answer
            return ""
    try:
        book.put(orders)
    except sqlite3.Error as e:  # the store failed: the RIS keeps the message and sends it again
        error = OrderError(f"the order book could not store it ({type(e).__name__})", "AE", "", "207")
        log.error("order message not stored: %s", error)
        return recode(ack(message, error), STANDARD, sender or STANDARD)
    controls = sorted({o.control for o in orders})
    log.info("%s: %d order(s) stored (%s)", message_type(message), len(orders), ", ".join(controls))
    return recode(ack(message), STANDARD, sender or STANDARD)


async def serve(
    book: OrderBook, host: str, port: int, tls: ssl.SSLContext | None = None, accession: str = "auto"
) -> asyncio.Server:
    """Start the MLLP listener (``asyncio``); each connection may carry any number of messages."""

    async def handle(reader, writer) -> None:
        try:
            while not reader.at_eof():
                block = await reader.readblock()
                try:
                    text = block.decode("utf-8")
                except UnicodeDecodeError:  # MSH-18 8859/1, the other character set RISs send
                    text = block.decode("latin-1")
                answer = take(book, text, accession)
                if not answer:
                    log.warning("a block that is not HL7 came in: the connection is closed")
                    break
                writer.writeblock(answer.encode("utf-8"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the RIS hung up
        except Exception as e:  # noqa: BLE001 - a broken frame: this connection ends, the listener stays
            log.warning("an MLLP connection ended on %s", type(e).__name__)
        finally:
            writer.close()

    return await start_hl7_server(handle, host, port, ssl=tls)
