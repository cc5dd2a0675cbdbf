"""Posting to a FHIR server: ``listen --fhir-url URL`` sends each result there as a transaction
Bundle (``pneumolens.integration.fhir.transaction``) through an outbox
(``pneumolens.integration.outbox``), so none is lost while the server is away.

The receiver is the server's base URL. A 2xx answer takes the bundle. No answer, a timeout, HTTP
401, 403, 408, 429 or 5xx: it waits for the next pass (credentials can be fixed, load goes away).
Any other answer (400, 404, 409, 412, 422: the server will never take this bundle as it is) refuses
it for good; the server's answer (an OperationOutcome) is kept beside it. A bundle sent twice
creates nothing twice: each entry is a conditional create on its identifier.

Authorisation is a bearer token read from a file (``--fhir-token-file``; never from the command
line, where ``ps`` shows it) or tokens got by SMART Backend Services (``--fhir-client-id`` and
``--fhir-key``, ``pneumolens.integration.smart_auth``), renewed once when the server answers 401; no token to
be had (the authorisation server away or refusing the client) keeps the bundle waiting. https is
checked with the system's or a given CA (``--fhir-ca``, also for the token endpoint). The log
names the server by scheme, host and port (a URL's query can hold a secret). Standard library only
(``urllib``): a POST needs no client library.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from pneumolens.integration.credentials import TokenFile, bearer
from pneumolens.integration.fhir import MEDIA_TYPE
from pneumolens.integration.outbox import Answer
from pneumolens.integration.smart_auth import AuthError, SmartAuth
from pneumolens.monitoring.alert import exchange, where

TIMEOUT_S = 30.0
TRY_AGAIN = frozenset({401, 403, 408, 429})  # answers that may change without the bundle changing (or 5xx)


@dataclass
class FhirSender:
    """POSTs a bundle to the FHIR server at ``url``."""

    url: str
    token: str | TokenFile | None = None  # a bearer token, or the file that holds it (read again when it changes)
    ca: str | None = None  # a PEM CA bundle for https; None: the system's
    smart: dict | None = None  # SmartAuth's arguments (client_id, key_path, token_url, scope) instead of a token
    kind: str = "fhir"

    def __post_init__(self) -> None:
        self.where = where(self.url)
        self._tls = None
        if self.url.startswith("https:"):  # the server checked against ``ca`` only, else the system's CAs
            from pneumolens.integration.dicom_node import tls_context

            self._tls = tls_context(None, None, self.ca, server=False, flags=("", "", "--fhir-ca"))
        self.auth = SmartAuth(self.url, tls=self._tls, **self.smart) if self.smart is not None else None

    def __call__(self, body: bytes) -> Answer:
        try:
            status, text = self._post(body)
            if status == 401 and self.auth is not None:  # the kept token may have been revoked: one new one
                self.auth.forget()
                status, text = self._post(body)
        except AuthError as e:
            return Answer("retry", f"no access token: {e}")
        except (urllib.error.URLError, OSError) as e:
            return Answer("retry", f"could not be reached ({getattr(e, 'reason', e)})")
        if 200 <= status < 300:
            return Answer("delivered")
        if status in TRY_AGAIN or status >= 500:
            return Answer("retry", f"answered HTTP {status}")
        return Answer("rejected", f"HTTP {status}", text)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE}
        if self.auth is not None:
            headers["Authorization"] = self.auth.authorization()
        elif self.token:
            headers["Authorization"] = bearer(self.token)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        return exchange(request, TIMEOUT_S, self._tls)
