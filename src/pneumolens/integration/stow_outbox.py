"""Storing the node's results in a PACS over DICOMweb: ``listen --stow-url URL`` sends each DICOM
object the node makes (the picture, and the report, presentation state and segmentation when
asked for) to the service's STOW-RS endpoint (``URL/studies``, PS3.18 10.5), one object per
request, through an outbox (``pneumolens.integration.outbox``), so none is lost while the PACS is away. Unlike
``--forward`` (DIMSE, answered before the modality's C-STORE is), the modality never waits on it.

What the PACS answers decides (PS3.18 table 10.5.3-1, the failure reasons of PS3.4 annex B):
200, or 202 naming no failed instance (stored with warnings, such as coerced elements): stored.
A failed instance whose reason is "duplicate SOP instance" (0111H) is stored already (an earlier
answer was lost). Out of resources (A7xxH), processing failure (0110H), not authorised (0124H),
no answer, HTTP 401, 403, 408, 429 or 5xx: it waits for the next pass. Any other failure (the PACS
cannot understand the object, does not take its class or transfer syntax): refused for good, with
the PACS's answer kept beside it. The HTTP exchange is dicomweb-client's (its own retries off: the
outbox retries); its log, which at debug level prints the request's headers with the token, is
silenced.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pneumolens.integration.credentials import BearerAuth, TokenFile
from pneumolens.integration.outbox import Answer
from pneumolens.monitoring.alert import where

logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL + 1)

TIMEOUT_S = 30.0
ONE_REQUEST_BYTES = 2**31  # dicomweb-client's chunk size: no object is sent in chunks
TRY_AGAIN = frozenset({401, 403, 408, 429})  # HTTP answers that may change without the object changing (or 5xx)
ALREADY_STORED = 0x0111  # Duplicate SOP Instance
WAIT_REASONS = frozenset({0x0110, 0x0124})  # Processing failure, Not authorized (and A7xxH: out of resources)


def web_client(url: str, ca: str | None, timeout: float = TIMEOUT_S) -> tuple[DICOMwebClient, requests.Session]:
    """dicomweb-client for the service at ``url`` (``ca``: a PEM bundle for https; None: the system's),
    and its session: every object in one request with its Content-Length, which every server and proxy
    takes (the client sends anything over its default megabyte with chunked transfer encoding), and its
    own retries off (the caller decides what to try again)."""
    session = requests.Session()
    session.verify = ca if ca else True
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout, chunk_size=ONE_REQUEST_BYTES)
    client.set_http_retry_params(retry=False)
    return client, session


@dataclass
class StowSender:
    """STOW-RS of one DICOM file to the DICOMweb service at ``url`` (its base URL)."""

    url: str
    token: str | TokenFile | None = None  # a bearer token, or the file that holds it
    ca: str | None = None  # a PEM CA bundle for https; None: the system's
    kind: str = "stow"

    def __post_init__(self) -> None:
        self.where = where(self.url)
        self._client, self._session = web_client(self.url, self.ca)
        self._session.hooks["response"].append(self._keep)  # the raw answer: status and body as sent
        if self.token:
            self._session.auth = BearerAuth(self.token)
        self._answer: requests.Response | None = None

    def _keep(self, response: requests.Response, *args, **kwargs) -> None:
        self._answer = response

    def __call__(self, body: bytes) -> Answer:
        dataset = pydicom.dcmread(io.BytesIO(body))
        self._answer = None
        try:
            self._client.store_instances([dataset])
        except (requests.HTTPError, ValueError):  # judged below from the answer itself
            pass
        except requests.RequestException as e:
            return Answer("retry", f"could not be reached ({type(e).__name__})")
        if self._answer is None:
            return Answer("retry", "gave no answer")
        status, text = self._answer.status_code, self._answer.content
        failed = _failure_reasons(text)
        if failed:  # one object was sent, so its one reason decides, whatever the status
            return _judge(failed[0], f"HTTP {status}", text)
        if 200 <= status < 300:
            return Answer("delivered")
        if status in TRY_AGAIN or status >= 500:
            return Answer("retry", f"answered HTTP {status}")
        return Answer("rejected", f"HTTP {status}", text)


def _failure_reasons(text: bytes) -> list[int]:
    """The failure reasons of a STOW-RS answer's failed instances (DICOM JSON), [] when it names none."""
    try:
        answer = Dataset.from_json(text.decode("utf-8"))
    except Exception:  # noqa: BLE001 - HTML from a proxy, plain text, nothing: no reasons
        return []
    return [int(item.get("FailureReason", 0)) for item in answer.get("FailedSOPSequence", [])]


def _judge(reason: int, status: str, text: bytes) -> Answer:
    said = f"{status}, failure reason {reason:04X}H"
    if reason == ALREADY_STORED:
        return Answer("delivered")
    if reason in WAIT_REASONS or 0xA700 <= reason <= 0xA7FF:
        return Answer("retry", f"answered {said}")
    return Answer("rejected", said, text)
