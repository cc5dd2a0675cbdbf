"""``pneumolens pull``: ask a PACS for the chest X-rays of a period and have them sent to the node.

For a retrospective look at a site's own films, or to catch up after the node was down: a Study Root
C-FIND for the studies of the dates asked (or the Study Instance UIDs given), a C-FIND per study for
its series, and a C-MOVE of each CR or DX series to a move destination, normally the AE title of a
running ``pneumolens listen``, which reads them as if the modality had sent them (pictures, reports,
audit). The PACS must know that AE title as a move destination (its address and port); pull cannot
tell it. With ``--get DIR`` the series come back over pull's own association instead (C-GET, pull
taking the storage role), each image written to ``DIR`` as received: no destination, no node.

What it prints names no patient and no UID: a study's date, its series and images counted, and
what the PACS said about the move. Bad input stops it before any association with a message naming
the flag; a PACS that refuses, fails or does not know the destination is named with the status
it answered.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset

from pneumolens.checkpoint import atomic_write
from pneumolens.integration.dicom_node import (
    ACCEPTED,
    OUT_OF_RESOURCES,
    SUCCESS,
    TRANSFER_SYNTAXES,
    Destination,
    uid_file_name,
)
from pneumolens.integration.dicom_qr import FIND, GET, MOVE  # Study Root Query/Retrieve: the node serves them too

# pynetdicom logs each C-FIND answer's identifier at INFO (UIDs, and names if a PACS sends them): pull
# says in its own words what it found, and pynetdicom only what went wrong.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

MODALITIES = ("CR", "DX")  # the modalities of the images the node accepts (``dicom_node.ACCEPTED``)
PENDING = (0xFF00, 0xFF01)
MOVE_STATUS = {  # PS3.4 C.4.2.1.5: what a PACS answers a C-MOVE with, in words
    0xA701: "out of resources: unable to calculate the number of matches",
    0xA702: "out of resources: unable to perform the sub-operations",
    0xA801: "move destination unknown: add it (AE title, address, port) to the PACS's destinations",
    0xA900: "the identifier does not match the SOP class",
    0xC000: "unable to process",
    0xFE00: "cancelled",
    0xB000: "some sub-operations failed or gave warnings",
}
_DATE = re.compile(r"^\d{8}$")


@dataclass
class Series:
    study: str
    series: str
    modality: str
    images: int | None  # Number of Series Related Instances, when the PACS says


@dataclass
class Study:
    uid: str
    date: str  # YYYYMMDD, or "" when the PACS has none


@dataclass
class Moved:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    problem: str | None = None  # the PACS's last non-success status, in words


def date_range(since: str | None, until: str | None) -> str:
    """The C-FIND Study Date matching key for ``since``..``until`` (YYYY-MM-DD or YYYYMMDD; either may
    be open): "20261101-20261130", "20261101-", "-20261130". Raises ``ValueError`` naming the flag."""
    parts = []
    for flag, value in (("--since", since), ("--until", until)):
        if value is None:
            parts.append("")
            continue
        text = value.replace("-", "")
        try:
            if not _DATE.match(text):
                raise ValueError
            date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise ValueError(f"{flag} {value!r}: expected a date, YYYY-MM-DD") from None
        parts.append(text)
    if parts[0] and parts[1] and parts[0] > parts[1]:
        raise ValueError(f"--since {since} is after --until {until}")
    return "-".join(parts) if any(parts) else ""


def _status(status: Dataset) -> int:
    return int(getattr(status, "Status", -1)) if status else -1


class Pacs:
    """An association with the PACS (Study Root FIND, and MOVE or, with ``get_into``, GET), as a
    context manager. With ``get_into`` the images come back over the same association and are
    written there, each as received, named by its SOP Instance UID."""

    def __init__(
        self,
        pacs: Destination,
        ae_title: str = "PNEUMOLENS",
        tls: ssl.SSLContext | None = None,
        get_into: Path | None = None,
    ) -> None:
        from pynetdicom import AE

        self.pacs, self.ae = pacs, AE(ae_title=ae_title)
        self.ae.add_requested_context(FIND)
        self.retrieve = GET if get_into is not None else MOVE
        self.ae.add_requested_context(self.retrieve)
        self.roles = []
        if get_into is not None:  # the PACS sends over our association: we take the storage SCP role
            from pynetdicom import build_role

            for uid in ACCEPTED:
                self.ae.add_requested_context(uid, list(TRANSFER_SYNTAXES))
                self.roles.append(build_role(uid, scp_role=True))
        self.tls, self.get_into, self.stored_failed = tls, get_into, 0
        self.assoc = None

    def __enter__(self) -> Pacs:
        from pynetdicom import evt

        p = self.pacs
        try:  # pynetdicom reports a peer it cannot reach as an aborted association: ask the network first
            socket.create_connection((p.host, p.port), timeout=10).close()
        except OSError as e:
            raise ConnectionError(
                f"--pacs {p.ae_title}@{p.host}:{p.port}: could not be reached ({e.strerror or e})"
            ) from None
        tls_args = (self.tls, p.host) if self.tls is not None else None
        handlers = [] if self.get_into is None else [(evt.EVT_C_STORE, self._store)]
        self.assoc = self.ae.associate(
            p.host, p.port, ae_title=p.ae_title, tls_args=tls_args, ext_neg=self.roles, evt_handlers=handlers
        )
        if not self.assoc.is_established:
            if self.assoc.is_rejected:
                why = "rejected the association (is our --ae-title one it knows?)"
            elif self.assoc.is_aborted:  # pynetdicom's answer when it takes none of the services asked for
                why = "aborted the association: it may not take Study Root queries and retrieves"
            else:
                why = "did not answer"
            raise ConnectionError(f"--pacs {p.ae_title}@{p.host}:{p.port}: {why}")
        offered = {cx.abstract_syntax for cx in self.assoc.accepted_contexts}
        retrieves = "retrieves (C-GET)" if self.retrieve == GET else "retrieves (C-MOVE)"
        for uid, what in ((FIND, "queries (C-FIND)"), (self.retrieve, retrieves)):
            if uid not in offered:
                self.assoc.release()
                raise ConnectionError(f"--pacs {p.ae_title}: does not take Study Root {what} from us")
        return self

    def __exit__(self, *exc) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()

    def find(self, identifier: Dataset) -> Iterator[Dataset]:
        """The matches of a C-FIND; a failure status raises ``ConnectionError`` with its code."""
        assert self.assoc is not None
        for status, match in self.assoc.send_c_find(identifier, FIND):
            code = _status(status)
            if code in PENDING and match is not None:
                yield match
            elif code != 0x0000:
                level = identifier.QueryRetrieveLevel
                raise ConnectionError(f"--pacs {self.pacs.ae_title}: {level} query failed (status 0x{code:04X})")

    def studies(self, dates: str = "", uids: Iterable[str] = ()) -> list[Study]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "\\".join(uids)
        ds.StudyDate = dates
        found = {str(m.StudyInstanceUID): str(m.get("StudyDate", "") or "") for m in self.find(ds)}
        return [Study(uid, day) for uid, day in found.items()]  # once each: some archives answer per image

    def series(self, study: Study, modalities: Iterable[str] = MODALITIES) -> list[Series]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.NumberOfSeriesRelatedInstances = ""
        wanted = {m.upper() for m in modalities}
        found: dict[str, Series] = {}  # once each, as above
        for m in self.find(ds):
            modality = str(m.get("Modality", "") or "").upper()
            if modality in wanted:
                count = m.get("NumberOfSeriesRelatedInstances")
                uid = str(m.SeriesInstanceUID)
                found[uid] = Series(study.uid, uid, modality, int(count) if count else None)
        return list(found.values())

    def _store(self, event) -> int:
        """C-STORE over our C-GET: the image as received, atomically, named by its UID."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            name = uid_file_name(ds.SOPInstanceUID)
            assert self.get_into is not None
            atomic_write(self.get_into / f"{name}.dcm", lambda tmp: ds.save_as(tmp, enforce_file_format=True))
        except Exception as e:  # noqa: BLE001 - the PACS gets a failure status; the type says what failed
            self.stored_failed += 1
            log.warning("pull: an image could not be written (%s)", type(e).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def move(self, series: Series, destination: str | None) -> Moved:
        """C-MOVE one series to ``destination`` (or, with ``get_into``, C-GET it: ``destination`` is
        not used); the PACS's counts and its last problem, if any."""
        assert self.assoc is not None
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study, series.series
        moved = Moved()
        if self.retrieve == GET:
            answers = self.assoc.send_c_get(ds, GET)
        else:
            answers = self.assoc.send_c_move(ds, str(destination), MOVE)
        for status, _ in answers:
            code = _status(status)
            if code == -1:
                moved.problem = "no answer from the PACS (timed out or the association was aborted)"
                break
            for attr, key in (
                ("completed", "NumberOfCompletedSuboperations"),
                ("failed", "NumberOfFailedSuboperations"),
                ("warning", "NumberOfWarningSuboperations"),
            ):
                if key in status and status[key].value is not None:
                    setattr(moved, attr, int(status[key].value))
            if code not in PENDING and code != 0x0000:
                moved.problem = f"status 0x{code:04X}: {_words(code)}"
        return moved


def _words(code: int) -> str:
    if code in MOVE_STATUS:
        return MOVE_STATUS[code]
    return MOVE_STATUS[0xC000] if 0xC000 <= code <= 0xCFFF else "failed"


def pull_studies(
    pacs: Pacs,
    studies: list[Study],
    modalities: tuple[str, ...],
    say: Callable[[str], None],
    destination: str | None = None,
    dry_run: bool = False,
) -> int:
    """Move each study's series of ``modalities`` to ``destination`` (or get them, when ``pacs`` was
    opened with ``get_into``), saying a line per study and a total; with ``dry_run`` nothing moves.
    ``pacs`` may also be a ``pneumolens.integration.dicomweb_pull.WebPacs``, which answers the same calls over
    DICOMweb. Returns how many studies had a problem."""
    kinds = " or ".join(modalities)
    verb = "retrieved" if pacs.retrieve == GET else "moved"
    total, moved_series, problems = Moved(), 0, 0
    for i, study in enumerate(studies, 1):
        day = f"{study.date[:4]}-{study.date[4:6]}-{study.date[6:]}" if len(study.date) == 8 else "no date"
        series = pacs.series(study, modalities)
        if not series:
            say(f"  {i}. {day}: no {kinds} series")
            continue
        if dry_run:
            counts = [s.images for s in series if s.images is not None]  # when the PACS says
            images = f" ({_count(sum(counts), 'image')})" if len(counts) == len(series) else ""
            say(f"  {i}. {day}: would move {len(series)} series{images}")
            continue
        done = Moved()
        for one in series:
            m = pacs.move(one, destination)
            done.completed, done.failed, done.warning = (
                done.completed + m.completed,
                done.failed + m.failed,
                done.warning + m.warning,
            )
            done.problem = m.problem or done.problem
        line = f"  {i}. {day}: {len(series)} series, {_count(done.completed, 'image')} {verb}"
        line += f", {done.failed} failed" if done.failed else ""
        line += f", {done.warning} with warnings" if done.warning else ""
        if done.problem:
            line, problems = f"{line} ({done.problem})", problems + 1
        say(line)
        moved_series += len(series)
        total.completed, total.failed = total.completed + done.completed, total.failed + done.failed
    if not dry_run:
        say(f"{moved_series} series: {_count(total.completed, 'image')} {verb}, {total.failed} failed")
    return problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
