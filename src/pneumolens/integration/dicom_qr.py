"""The node's own query/retrieve service (``listen --qr``): a viewer or PACS asks the node which
results it holds (Study Root C-FIND) and has them sent (C-GET over its own association, or C-MOVE
to a destination the node knows, ``--qr-dest AE@host:port``, over TLS with ``--qr-dest-tls``).

What is served is the node's ``--out`` folder: the pictures, reports, presentation states and
segmentations it wrote, read by their headers (the pixels only when one is sent); with ``--keep``,
the films they were made from as well, so that a viewer shows each film with its results.
Matching follows PS3.4 C.2.2.2 for the keys a viewer uses: single value, a list of UIDs, ``*`` and ``?`` wildcards,
date and time ranges (``20261201-20261206``), and universal matching for an empty key; a key the
node does not hold matches only when the query leaves it empty. A response holds the keys the query
asked for, as the files have them, and ``QueryRetrieveLevel`` and ``RetrieveAETitle``; the
attributes a PACS computes (``ModalitiesInStudy``, the numbers of related studies, series and
instances) are computed, and ``ModalitiesInStudy`` matches a study with any series of the
modality. Information models: Study Root (levels STUDY, SERIES, IMAGE) and Patient Root (PATIENT
above them). Relational queries are not supported. Nothing of a query or a response is logged:
they hold patient identifiers.
"""

from __future__ import annotations

import fnmatch
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

log = logging.getLogger(__name__)

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root: the same, with a PATIENT level above
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
PATIENT_ROOT = (PATIENT_FIND, PATIENT_MOVE, PATIENT_GET)
UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
LEVELS = tuple(UNIQUE)
PENDING, SUCCESS, CANCELLED = 0xFF00, 0x0000, 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # the identifier's level or keys make no sense for Study Root
MOVE_DESTINATION_UNKNOWN = 0xA801
SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
# return keys no file holds: counted over the store (PS3.4 C.3.4, C.6.1.1.4)
COMPUTED = {
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "NumberOfPatientRelatedStudies",
}
SCOPE = {"NumberOfSeriesRelatedInstances": "SeriesInstanceUID", "NumberOfPatientRelatedStudies": "PatientID"}


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _matches_one(key: str, vr: str, wanted: object, have: object) -> bool:
    """PS3.4 C.2.2.2 matching of one key; ``wanted`` is not empty."""
    if have is None:
        return False
    if isinstance(wanted, (list, tuple, MultiValue)):  # several values (a list of UIDs): any of them
        return any(_matches_one(key, vr, one, have) for one in wanted)
    want, got = _text(wanted), _text(have)
    if key.endswith("UID"):  # list of UID matching, also when given as one backslash-joined string
        return got in want.split("\\")
    if vr in ("DA", "TM", "DT") and "-" in want:  # range matching, either end open
        low, _, high = want.partition("-")
        return (not low or got >= low) and (not high or got[: len(high)] <= high)
    if "*" in want or "?" in want:
        return fnmatch.fnmatchcase(got, want.replace("[", "[[]"))
    return got == want


def matches(query: Dataset, header: Dataset) -> bool:
    """Whether ``header`` (a file's) answers every non-empty key of ``query``."""
    for element in query:
        if element.keyword in SKIP or element.keyword in COMPUTED or element.VR == "SQ":
            continue
        if element.value in (None, "", b""):
            continue
        have = header.get(element.keyword)
        if not _matches_one(element.keyword, element.VR, element.value, have):
            return False
    return True


@dataclass
class ResultStore:
    """The DICOM files the node wrote in ``folder`` (and kept in ``originals``), indexed by their
    headers (re-read when a file changes; a file that cannot be read is skipped)."""

    folder: Path
    originals: Path | None = None  # listen --keep: the films, served beside their results
    _headers: dict[Path, tuple[float, Dataset]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def headers(self) -> list[tuple[Path, Dataset]]:
        with self._lock:
            seen = {}
            folders = [self.folder, *([self.originals] if self.originals is not None else [])]
            for path in sorted(p for folder in folders for p in folder.glob("*.dcm")):
                try:
                    mtime = path.stat().st_mtime
                    cached = self._headers.get(path)
                    if cached is None or cached[0] != mtime:
                        cached = (mtime, pydicom.dcmread(path, stop_before_pixels=True))
                    seen[path] = cached
                except (OSError, pydicom.errors.InvalidDicomError, ValueError):
                    continue  # gone meanwhile, or being written
            self._headers = seen
            return [(path, header) for path, (_, header) in seen.items()]

    @staticmethod
    def read(path: Path) -> Dataset | None:
        """A served object with its pixels, or None if retention deleted it meanwhile."""
        try:
            return pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError):
            return None

    def find(self, query: Dataset) -> list[tuple[Path, Dataset]]:
        """The files whose headers match ``query`` (its level's and the levels above's keys)."""
        return [(path, header) for path, header in self.headers() if matches(query, header)]


def level_of(query: Dataset, patient_root: bool = False) -> str | None:
    """The query's level, None when the information model has no such level (PATIENT is Patient
    Root's only)."""
    level = _text(query.get("QueryRetrieveLevel", "")).upper()
    return level if level in LEVELS and (patient_root or level != "PATIENT") else None


def _patient_root(event) -> bool:
    return str(getattr(event.request, "AffectedSOPClassUID", "")) in PATIENT_ROOT


def responses(query: Dataset, store: ResultStore, ae_title: str) -> Iterator[Dataset]:
    """One identifier per distinct entity of the query's level (a study, a series, an image) among
    the matching files: the query's keys, filled from the first matching file."""
    level = level_of(query, patient_root=True)  # the caller has checked the level against its model
    assert level is not None
    unique = UNIQUE[level]
    headers = [header for _, header in store.headers()]
    counts = _counts(headers) if any(element.keyword in COMPUTED for element in query) else {}
    modalities = query.get("ModalitiesInStudy")
    done = set()
    for header in headers:
        key = _text(header.get(unique))
        if not key or key in done or not matches(query, header):
            continue
        study = _text(header.get("StudyInstanceUID"))
        if modalities not in (None, "") and not any(
            _matches_one("Modality", "CS", modalities, m) for m in counts["ModalitiesInStudy"].get(study, [])
        ):
            continue
        done.add(key)
        answer = Dataset()
        if "SpecificCharacterSet" in header:
            answer.SpecificCharacterSet = header.SpecificCharacterSet
        answer.QueryRetrieveLevel = level
        for element in query:
            if element.keyword in SKIP or not element.keyword:
                continue
            if element.keyword in COMPUTED:
                scope = SCOPE.get(element.keyword, "StudyInstanceUID")
                value = counts[element.keyword].get(_text(header.get(scope)))
            else:
                value = header.get(element.keyword)
            setattr(answer, element.keyword, value if value is not None else "")
        answer.RetrieveAETitle = ae_title
        yield answer


def _counts(headers: list[Dataset]) -> dict[str, dict[str, object]]:
    """``COMPUTED``'s values: per study UID (per series UID, or patient ID, where ``SCOPE`` says)."""
    series: dict[str, set[str]] = {}
    instances: dict[str, int] = {}
    in_series: dict[str, int] = {}
    found: dict[str, list[str]] = {}
    for header in headers:
        study, one = _text(header.get("StudyInstanceUID")), _text(header.get("SeriesInstanceUID"))
        series.setdefault(study, set()).add(one)
        instances[study] = instances.get(study, 0) + 1
        in_series[one] = in_series.get(one, 0) + 1
        modality = _text(header.get("Modality"))
        if modality and modality not in found.setdefault(study, []):
            found[study].append(modality)
    studies: dict[str, set[str]] = {}
    for header in headers:
        studies.setdefault(_text(header.get("PatientID")), set()).add(_text(header.get("StudyInstanceUID")))
    return {
        "NumberOfPatientRelatedStudies": {patient: len(s) for patient, s in studies.items()},
        "ModalitiesInStudy": {study: sorted(m) for study, m in found.items()},
        "NumberOfStudyRelatedSeries": {study: len(s) for study, s in series.items()},
        "NumberOfStudyRelatedInstances": instances,
        "NumberOfSeriesRelatedInstances": in_series,
    }


@dataclass
class QueryRetrieve:
    """The C-FIND, C-GET and C-MOVE handlers over ``store``; ``destinations``: AE title -> (host,
    port) for C-MOVE, reached over TLS with ``tls`` (a client context), else plain TCP."""

    store: ResultStore
    ae_title: str
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None

    def on_find(self, event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        if level_of(query, _patient_root(event)) is None:
            log.warning("listen: C-FIND refused: no level of its information model")
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        count = 0
        for answer in responses(query, self.store, self.ae_title):
            if event.is_cancelled:
                yield CANCELLED, None
                return
            count += 1
            yield PENDING, answer
        log.info("listen: C-FIND at %s level: %d match(es)", level_of(query, True), count)

    def on_get(self, event) -> Iterator[object]:
        yield from self._retrieve(event, "GET")

    def on_move(self, event) -> Iterator[object]:
        where = self.destinations.get(_text(event.move_destination).strip())
        if where is None:
            log.warning("listen: C-MOVE to an AE title not on --qr-dest refused")
            yield None, None  # pynetdicom answers: move destination unknown
            return
        host, port = where  # the new association's: over TLS when the node was given it for C-MOVE
        yield (host, port, {"tls_args": (self.tls, host)}) if self.tls is not None else (host, port)
        yield from self._retrieve(event, "MOVE")

    def _retrieve(self, event, how: str) -> Iterator[object]:
        """The sub-operation count, then each matching object (pynetdicom's C-GET and C-MOVE protocol)."""
        query = event.identifier
        if level_of(query, _patient_root(event)) is None:
            yield 0
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        files = [path for path, _ in self.store.find(query)]
        yield len(files)
        sent = 0
        for path in files:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            dataset = self.store.read(path)
            if dataset is None:  # deleted by retention meanwhile
                continue
            sent += 1
            yield PENDING, dataset
        log.info("listen: %d result object(s) sent (C-%s)", sent, how)
