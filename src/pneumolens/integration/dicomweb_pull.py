"""``pneumolens pull --dicomweb URL``: the same pull from a PACS or cloud archive that speaks DICOMweb
rather than DIMSE (many cloud archives speak nothing else).

QIDO-RS finds the studies of the dates asked (or the Study Instance UIDs given) and their series;
WADO-RS retrieves each CR or DX series, and each image is written to ``--get DIR`` as received, or
stored by STOW-RS at ``--to-url`` (a running ``pneumolens listen --dicomweb-port``, which reads it
as if the modality had sent it). ``WebPacs`` answers as ``pneumolens.integration.dicom_pull.Pacs`` does, so that
``pull_studies`` says the same lines for either. What it prints names no patient and no UID; a
service that cannot be reached or refuses is named with its HTTP status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import requests
from pydicom.dataset import Dataset

from pneumolens.checkpoint import atomic_write
from pneumolens.integration.credentials import BearerAuth, TokenFile
from pneumolens.integration.dicom_node import uid_file_name
from pneumolens.integration.dicom_pull import GET, MODALITIES, MOVE, Moved, Series, Study
from pneumolens.integration.stow_outbox import web_client  # also silences dicomweb-client's log, which prints the token

log = logging.getLogger(__name__)
TIMEOUT_S = 60.0


def _client(url: str, token: str | TokenFile | None, ca: str | None):
    client, session = web_client(url, ca, TIMEOUT_S)  # a failure is said, not hidden behind retries
    if token is not None:
        session.auth = BearerAuth(token)  # read again when the file changes: a long pull takes a renewed one
    return client


def _why(e: Exception) -> str:
    """An HTTP failure in words: the status, or the kind of connection failure."""
    response = getattr(e, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}"
    return f"could not be reached ({type(e).__name__})"


class WebPacs:
    """A DICOMweb service as ``pull`` sees a PACS: ``studies``, ``series`` and ``move`` (retrieve a
    series into ``get_into``, or store it at ``to_url``)."""

    def __init__(
        self,
        url: str,
        token: str | TokenFile | None = None,
        ca: str | None = None,
        get_into: Path | None = None,
        to_url: str | None = None,
        to_token: str | TokenFile | None = None,
    ) -> None:
        self.url, self.get_into, self.to_url = url, get_into, to_url
        self.retrieve = GET if get_into is not None else MOVE  # pull_studies' "retrieved" or "moved"
        self._client = _client(url, token, ca)
        self._to = _client(to_url, to_token, None) if to_url else None

    def __enter__(self) -> WebPacs:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _search(self, what: str, run) -> list[dict]:
        try:
            return run()
        except requests.RequestException as e:
            raise ValueError(f"--dicomweb {self.url}: the {what} search failed: {_why(e)}") from None

    def studies(self, dates: str = "", uids: Iterable[str] = ()) -> list[Study]:
        """The studies of ``dates`` (a DICOM range) or with the given UIDs."""
        filters = [{"StudyInstanceUID": uid} for uid in uids] or [{"StudyDate": dates}]
        found: dict[str, Study] = {}
        for one in filters:
            answers = self._search(
                "study", lambda one=one: self._client.search_for_studies(search_filters=one, get_remaining=True)
            )
            for answer in answers:
                ds = Dataset.from_json(answer)
                uid = str(ds.get("StudyInstanceUID", "") or "")
                if uid:
                    found[uid] = Study(uid, str(ds.get("StudyDate", "") or ""))
        return list(found.values())

    def series(self, study: Study, modalities: Iterable[str] = MODALITIES) -> list[Series]:
        """The study's series of ``modalities``, with their image counts when the service says."""
        wanted = set(modalities)
        answers = self._search(
            "series",
            lambda: self._client.search_for_series(study.uid, fields=["NumberOfSeriesRelatedInstances"]),
        )
        found = []
        for answer in answers:
            ds = Dataset.from_json(answer)
            if str(ds.get("Modality", "")) in wanted and ds.get("SeriesInstanceUID"):
                count = ds.get("NumberOfSeriesRelatedInstances")
                found.append(
                    Series(study.uid, str(ds.SeriesInstanceUID), str(ds.Modality), int(count) if count else None)
                )
        return found

    def move(self, series: Series, destination: str | None = None) -> Moved:
        """Retrieve the series (WADO-RS) and write each image into ``get_into`` or store it at
        ``to_url`` (STOW-RS): the counts, and the last problem in words."""
        moved = Moved()
        try:
            images = self._client.iter_series(series.study, series.series)
            for ds in images:
                if self._write(ds):
                    moved.completed += 1
                else:
                    moved.failed += 1
        except requests.RequestException as e:
            moved.problem = f"retrieving the series: {_why(e)}"
        except Exception as e:  # noqa: BLE001 - a part that is no DICOM file: the service's fault, said by type
            moved.problem = f"retrieving the series: an unreadable answer ({type(e).__name__})"
        if moved.failed and not moved.problem:
            moved.problem = f"{moved.failed} image(s) could not be {'written' if self.get_into else 'stored'}"
        return moved

    def _write(self, ds: Dataset) -> bool:
        try:
            if self.get_into is not None:
                name = uid_file_name(ds.SOPInstanceUID)
                atomic_write(self.get_into / f"{name}.dcm", lambda tmp: ds.save_as(tmp, enforce_file_format=True))
            else:
                assert self._to is not None
                self._to.store_instances([ds])
        except Exception as e:  # noqa: BLE001 - counted as failed; the type says what failed
            reason = _why(e) if isinstance(e, requests.RequestException) else type(e).__name__
            log.warning("pull: an image could not be %s (%s)", "written" if self.get_into else "stored", reason)
            return False
        return True
