"""Store and forward to a FHIR server: ``listen --fhir-url URL`` posts each result there as a
transaction Bundle (``pneumolens.fhir.transaction``), and loses none when the server is away.

Every bundle is first written to an outbox folder (atomically, named by the image's UID), then a
background thread posts it to the server's base URL and deletes it once the server answers 2xx.
No answer, a timeout, HTTP 401, 403, 408, 429 or 5xx: the bundle stays, and the whole outbox is
tried again after ``retry_every`` seconds (and at the node's next start), oldest first. Any other
answer (400, 404, 409, 412, 422: the server will never take this bundle as it is) moves it to
``rejected/`` beside the outbox, with the server's answer in ``NAME.answer.json``, and the log says
so with the HTTP status only. A bundle sent twice creates nothing twice: each entry is a conditional
create on its identifier.

Only a bearer token is supported for authorisation (``--fhir-token-file``: read from a file, never
from the command line, where ``ps`` shows it), and https with the system's or a given CA
(``--fhir-ca``). Standard library only (``urllib``): a POST needs no client library.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumolens.alert import where
from pneumolens.checkpoint import atomic_write
from pneumolens.fhir import MEDIA_TYPE

log = logging.getLogger("pneumolens.fhir")
TIMEOUT_S = 30.0
RETRY_EVERY_S = 60.0
TRY_AGAIN = frozenset({401, 403, 408, 429})  # answers that may change without the bundle changing (or 5xx)


@dataclass
class Outbox:
    """Bundles waiting in ``folder`` for the FHIR server at ``url`` (its base URL)."""

    folder: Path
    url: str
    token: str | None = None
    ca: str | None = None  # a PEM CA bundle for https; None: the system's
    retry_every: float = RETRY_EVERY_S
    delivered: int = 0
    rejected: int = 0
    _wake: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tls = ssl.create_default_context(cafile=self.ca) if self.url.startswith("https:") else None

    def put(self, name: str, bundle: dict[str, Any]) -> Path:
        """Queue ``bundle`` as ``NAME.json`` (atomically: a crash leaves it whole or absent) and wake
        the sender."""
        path = self.folder / f"{name}.json"
        text = json.dumps(bundle)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self._wake.set()
        return path

    def waiting(self) -> list[Path]:
        """The queued bundles, oldest first (temporary files of a write in progress are not)."""
        paths = [p for p in self.folder.glob("*.json") if not p.name.startswith(".")]
        return sorted(paths, key=lambda p: (p.stat().st_mtime, p.name))

    def deliver(self) -> bool:
        """One pass over the outbox. Returns False when the server could not be reached or asked to
        wait (the rest stays for the next pass), True when the outbox was worked through."""
        with self._lock:  # one pass at a time: a bundle is never posted by two threads at once
            before = self.delivered
            try:
                return self._pass()
            finally:
                if self.delivered > before:
                    log.info("fhir: %d bundle(s) delivered to %s", self.delivered - before, where(self.url))

    def _pass(self) -> bool:
        """``deliver``'s pass, under its lock."""
        for path in self.waiting():
            try:
                body = path.read_bytes()
            except FileNotFoundError:  # delivered by an earlier pass meanwhile
                continue
            try:
                status, answer = self._post(body)
            except ConnectionError as e:
                log.warning("fhir: %s; %d bundle(s) wait in the outbox", e, len(self.waiting()))
                return False
            if 200 <= status < 300:
                path.unlink(missing_ok=True)
                self.delivered += 1
            elif status in TRY_AGAIN or status >= 500:
                log.warning(
                    "fhir: %s answered HTTP %d; %d bundle(s) wait in the outbox",
                    where(self.url),
                    status,
                    len(self.waiting()),
                )
                return False
            else:
                self._reject(path, status, answer)
        return True

    def _reject(self, path: Path, status: int, answer: bytes) -> None:
        rejected = self.folder / "rejected"
        rejected.mkdir(exist_ok=True)
        atomic_write(rejected / f"{path.stem}.answer.json", lambda tmp: Path(tmp).write_bytes(answer))
        path.replace(rejected / path.name)
        self.rejected += 1
        log.error(
            "fhir: %s refused a bundle (HTTP %d); it is kept in %s with the server's answer",
            where(self.url),
            status,
            rejected,
        )

    def _post(self, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self._tls) as answer:  # noqa: S310
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionError(f"{where(self.url)} could not be reached ({reason})") from None

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set: at once, whenever a bundle is queued, and every
        ``retry_every`` seconds while bundles wait. What is left at the stop stays for the next start."""
        while not stop.is_set():
            self._wake.clear()
            try:
                done = self.deliver()
            except OSError as e:  # the outbox folder itself: say so, keep the thread alive
                log.error("fhir: outbox %s: %s", self.folder, e.strerror or e)
                done = False
            if not done:
                log.debug("fhir: next try in %.0f s", self.retry_every)
            self._wake.wait(self.retry_every)  # a queued bundle or the stop wakes it sooner

    def start(self, stop: threading.Event) -> threading.Thread:
        """``run`` in a daemon thread; setting ``stop`` also wakes it."""
        thread = threading.Thread(target=self.run, args=(stop,), name="fhir-outbox", daemon=True)
        thread.start()
        return thread

    def stop(self, stop: threading.Event, thread: threading.Thread, wait: float = 5.0) -> None:
        stop.set()
        self._wake.set()
        thread.join(wait)


def read_token(path: str) -> str:
    """The bearer token in ``path`` (whitespace around it dropped), ``ValueError`` naming the flag."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--fhir-token-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--fhir-token-file {path}: expected one token on one line")
    return token
