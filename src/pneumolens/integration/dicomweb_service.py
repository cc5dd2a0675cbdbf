"""The node's own STOW-RS service: ``listen --dicomweb-port PORT`` also takes images over DICOMweb
(PS3.18 10.5, ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``), for a PACS or
router that sends by HTTP rather than by C-STORE. Each instance of the request goes the way a
C-STORE does (``Node.store``: read, scored, results written and sent on, audited); the answer says
per instance what became of it, in DICOM JSON:

200 every instance read; 202 some read and some not; 409 none. An instance the node cannot read
as a radiograph fails with C000H (cannot understand), one whose result could not be written or
sent on with A700H (out of resources: the sender may try again), one whose study is not the
request's target study with A901H (as Microsoft's DICOM server answers). A request that is not
``multipart/related; type="application/dicom"`` is answered 415, a malformed one 400, a missing
or wrong bearer token (with ``--dicomweb-token-file``) 401, one larger than the limit 413; none
with 500. A request is split as it arrives, each instance spooled to a temporary file of its own
(on disk beyond ``SPOOL_BYTES``), and its instances are scored one at a time once all of it has
come and parsed: never held whole in memory. The node's TLS (``--tls-cert``, ``--tls-key``,
``--tls-ca``) guards this port too.
The answer names instances by UID only; the log names none. With ``--qr`` the same port also
serves the node's results to QIDO-RS and WADO-RS (``pneumolens.integration.dicomweb_results``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import logging
import quopri
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pydicom
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset

from pneumolens.integration.credentials import TokenFile, bearer

log = logging.getLogger("pneumolens.integration.dicomweb_service")
MEDIA_TYPE = "application/dicom+json"
CANNOT_UNDERSTAND, OUT_OF_RESOURCES, STUDY_MISMATCH = 0xC000, 0xA700, 0xA901
MAX_REQUEST_MB = 512
SPOOL_BYTES = 8 * 1024 * 1024  # a part larger than this waits in a temporary file, not in memory
PREAMBLE_BYTES = 64 * 1024  # text a body may carry before its first boundary (RFC 2046)
ENCODINGS = {"binary", "8bit", "7bit", "base64", "quoted-printable"}


class RelatedParts:
    """A ``multipart/related; type="application/dicom"`` body read as it arrives (``feed``, then
    ``finish``), each part into a temporary file of its own, in memory up to ``SPOOL_BYTES``: a
    request is never held whole. ``TypeError`` for another media type (a 415), ``ValueError`` for a
    malformed body (a 400). ``read(i)`` gives part ``i``, its transfer encoding undone."""

    def __init__(self, content_type: str) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        media, params = parse_options_header(content_type)
        if media != b"multipart/related" or params.get(b"type", b"").lower() != b"application/dicom":
            raise TypeError('expected multipart/related; type="application/dicom"')
        boundary = params.get(b"boundary", b"")
        if not boundary:
            raise ValueError("a multipart body without a boundary")
        self.parts: list[Any] = []
        self.encodings: list[str] = []
        self._name, self._value = bytearray(), bytearray()
        self._start: bytearray | None = bytearray()  # what came before the first boundary, until it comes
        self._opening = b"--" + boundary
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": lambda data, start, end: self.parts[-1].write(data[start:end]),
                "on_header_field": lambda data, start, end: self._name.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header,
                "on_end": self._end,
            },
        )

    def _begin(self) -> None:
        self.parts.append(tempfile.SpooledTemporaryFile(SPOOL_BYTES))
        self.encodings.append("binary")

    def _header(self) -> None:
        if self._name.strip().lower() == b"content-transfer-encoding":
            encoding = self._value.strip().lower().decode("latin-1")
            if encoding not in ENCODINGS:
                raise ValueError(f"a part in the unknown Content-Transfer-Encoding {encoding!r}")
            self.encodings[-1] = encoding
        self._name.clear()
        self._value.clear()

    def _end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        if self._start is not None:  # a preamble is skipped up to the line that opens the first part
            self._start += chunk
            at = 0 if self._start.startswith(self._opening) else self._start.find(b"\r\n" + self._opening)
            if at < 0:
                if len(self._start) > PREAMBLE_BYTES:
                    raise ValueError("a malformed multipart body: no boundary opens it")
                return
            chunk, self._start = bytes(self._start[at:]), None  # the parser takes a leading line break
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise ValueError(f"a malformed multipart body ({e})") from None

    def finish(self) -> None:
        """``ValueError`` when the body ended before its closing boundary, or held no part."""
        if self._start is not None or not self._ended:
            raise ValueError("a malformed multipart body: it ends before its closing boundary")
        if not self.parts:
            raise ValueError("no instance in the request")

    def __len__(self) -> int:
        return len(self.parts)

    def read(self, i: int) -> bytes:
        """Part ``i``; ``ValueError`` when its base64 does not decode."""
        self.parts[i].seek(0)
        data = self.parts[i].read()
        if self.encodings[i] == "base64":
            try:
                return base64.b64decode(data)
            except binascii.Error:
                raise ValueError(f"part {i + 1}: its base64 does not decode") from None
        if self.encodings[i] == "quoted-printable":
            return quopri.decodestring(data)
        return data

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> RelatedParts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def instances(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a whole STOW-RS request body (or a WADO-RS answer): :class:`RelatedParts` at once."""
    with RelatedParts(content_type) as parts:
        parts.feed(body)
        parts.finish()
        return [parts.read(i) for i in range(len(parts))]


def _item(ds: Dataset | None, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for tag, keyword in (("00081150", "SOPClassUID"), ("00081155", "SOPInstanceUID")):
        value = str(getattr(ds, keyword, "") or "") if ds is not None else ""
        item[tag] = {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def store_answer(outcomes: list[tuple[Dataset | None, int | None]]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the DICOM JSON answer for ``outcomes`` ((dataset, failure reason or None))."""
    stored = [_item(ds) for ds, reason in outcomes if reason is None]
    failed = [_item(ds, reason) for ds, reason in outcomes if reason is not None]
    answer: dict[str, Any] = {}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 409 if not stored else 202
    return status, answer


def create_app(
    node,
    token: str | TokenFile | None = None,
    max_mb: float = MAX_REQUEST_MB,
    cors: tuple[str, ...] = (),
    url: str | None = None,
) -> FastAPI:
    """The STOW-RS routes over ``node`` (a ``pneumolens.integration.dicom_node.Node``), and with its ``qr`` the
    QIDO-RS and WADO-RS ones of its results (``pneumolens.integration.dicomweb_results``). ``cors``: the web
    origins whose pages may call the service (a viewer such as OHIF served from elsewhere); ``url``:
    the service's own URL as clients reach it (``--dicomweb-url``), for the URLs its answers hold."""
    app = FastAPI(title="pneumolens DICOMweb", openapi_url=None, docs_url=None, redoc_url=None)
    if cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Length"],
        )
    limit = int(max_mb * 1024 * 1024)

    def refused(status: int, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": detail}, headers=headers or None)

    def denied(request: Request) -> JSONResponse | None:
        """The 401 for a request without the bearer token (with ``token``), else None."""
        if token is None:
            return None
        expected = bearer(token)
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return refused(401, "a bearer token is needed", **{"WWW-Authenticate": "Bearer"})

    async def store(request: Request, study: str | None = None) -> JSONResponse:
        if (refusal := denied(request)) is not None:
            return refusal
        size = request.headers.get("content-length")
        too_big = refused(413, f"the request is larger than {max_mb:g} MB")
        if size is not None and size.isdigit() and int(size) > limit:
            return too_big
        try:
            parts = RelatedParts(request.headers.get("content-type", ""))
        except TypeError as e:
            return refused(415, str(e))
        except ValueError as e:
            return refused(400, str(e))
        with parts:  # each part spooled as it comes; all of them read before any is stored
            received = 0
            try:
                async for chunk in request.stream():  # a chunked request says no length: count as it comes
                    received += len(chunk)
                    if received > limit:
                        return too_big
                    parts.feed(chunk)
                parts.finish()
            except ValueError as e:
                return refused(400, str(e))
            outcomes = [await run_in_threadpool(_one, node, parts, i, study) for i in range(len(parts))]
        status, answer = store_answer(outcomes)
        read = sum(reason is None for _, reason in outcomes)
        log.info("dicomweb: %d instance(s) read, %d refused (HTTP %d)", read, len(outcomes) - read, status)
        return JSONResponse(status_code=status, content=answer, media_type=MEDIA_TYPE)

    app.add_api_route("/dicomweb/studies", store, methods=["POST"])
    app.add_api_route("/dicomweb/studies/{study}", store, methods=["POST"])
    if node.qr is not None:  # --qr: the results searched and retrieved too (QIDO-RS, WADO-RS)
        from pneumolens.integration.dicomweb_results import add_routes

        add_routes(app, node.qr, denied, url)
    return app


def _read(data: bytes) -> tuple[Dataset, bytes]:
    """A part's dataset, and the part as a PS3.10 file. A part that starts with its file meta
    information but without the 128-byte preamble and ``DICM`` (as dicomweb-client writes a dataset
    made in memory) is read too, and written out whole."""
    try:
        return pydicom.dcmread(io.BytesIO(data)), data
    except pydicom.errors.InvalidDicomError:
        if data[:2] != b"\x02\x00":  # not the file meta group either
            raise
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    whole = io.BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    return ds, whole.getvalue()


def _one(node, parts: RelatedParts, i: int, study: str | None) -> tuple[Dataset | None, int | None]:
    """Instance ``i`` of ``parts`` through the node: (its dataset if readable, its failure reason or
    None). Never raises: whatever goes wrong with one instance is that instance's failure, not a 500."""
    from pneumolens.integration.dicom_node import SUCCESS

    t0 = time.perf_counter()
    data = b""
    try:
        data = parts.read(i)
        ds, data = _read(data)
        its_study = str(ds.get("StudyInstanceUID", "") or "")
    except Exception as e:  # noqa: BLE001 - not a DICOM file: pydicom's many ways of saying so
        node.refuse(data, f"unreadable DICOM file ({type(e).__name__})", None, t0)
        return None, CANNOT_UNDERSTAND
    if study is not None and its_study != study:
        node.refuse(data, "not of the request's study", study, t0)
        return ds, STUDY_MISMATCH
    try:
        status = node.store(ds, data, t0)
    except Exception as e:  # noqa: BLE001 - Node.store does not raise; should it, the sender may try again
        log.error("dicomweb: an instance could not be handled (%s)", type(e).__name__)
        return ds, OUT_OF_RESOURCES
    return ds, None if status == SUCCESS else status


@dataclass
class DicomwebService:
    """``create_app`` served by uvicorn in a thread beside the DIMSE node."""

    port: int
    token: str | TokenFile | None = None
    tls: tuple[str, str, str | None] | None = None  # certificate, key, CA (mutual TLS) as the node's
    cors: tuple[str, ...] = ()  # --dicomweb-cors: web origins allowed to call it from a browser
    url: str | None = None  # --dicomweb-url: its URL as clients reach it (a proxy's), for RetrieveURL and BulkDataURI
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, node, host: str) -> None:
        """Serve ``node`` on ``host:port``; ``ValueError`` naming ``--dicomweb-port`` when the port
        cannot be had (taken, or not this machine's address)."""
        import uvicorn

        tls: dict[str, Any] = {}
        if self.tls is not None:
            cert, key, ca = self.tls
            tls = {"ssl_certfile": cert, "ssl_keyfile": key}
            if ca is not None:
                tls |= {"ssl_ca_certs": ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        app = create_app(
            node, self.token, cors=self.cors, url=self.url
        )  # no access log: its lines name the study in the path
        config = uvicorn.Config(
            app, host=host, port=self.port, log_config=None, log_level="warning", access_log=False, **tls
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="dicomweb", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ValueError(f"--host {host} --dicomweb-port {self.port}: cannot listen there")
            time.sleep(0.02)

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn's way of giving up on a port it cannot bind: ``start`` says so
            pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
