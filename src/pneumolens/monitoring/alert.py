"""An alert sent where people look: an HTTP POST of JSON to a webhook (``audit --drift --notify URL``,
``audit --agreement --notify URL``).

The body carries a one-line ``text`` (what Slack, Mattermost, Microsoft Teams' incoming webhooks
and most chat and paging bridges show as the message) and the whole report under ``report``
(``DriftReport.as_dict``: both windows' counts, every measure and its p-value, the notes). Only
aggregates leave the machine: the audit trail holds no patient identifiers. A webhook that does
not answer, or answers 429 or 5xx, gets the alert again twice (after 5 and 30 seconds). An alert
still undelivered is kept in an outbox (``deliver``: beside a SQLite audit database, else in
pneumolens' data folder) and sent, oldest first, by the next run with ``--notify``, marked with
the time it was first tried. Standard library only (``urllib``): one POST needs no client library.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pneumolens.integration.outbox import Answer, Outbox

if TYPE_CHECKING:
    from pneumolens.monitoring.drift import DriftReport

TIMEOUT_S = 10.0
RETRY_WAITS = (5.0, 30.0)  # seconds before the second and third attempt


def where(url: str) -> str:
    """The scheme and host of ``url``, for messages: a webhook's path or query often holds its secret
    token, which must not reach a log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else ``ValueError`` naming the flag."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--notify: expected an http:// or https:// URL with a host")
    return url


def alert_text(report: DriftReport, device: str | None = None) -> str:
    """One line: which measures drifted, over which windows."""
    moved = ", ".join(t.name for t in report.tests if t.alert) or "nothing"
    b, r = report.baseline, report.recent
    scope = f" (device {device})" if device else ""
    return (
        f"pneumolens drift alert on {socket.gethostname()}{scope}: {moved} changed "
        f"(recent {r.predictions} films read from {r.start or '?'}, against {b.predictions} before; "
        f"alpha {report.alpha}). The model's operating point may no longer hold: find out why."
    )


def outbox_for(db_url: str) -> Path:
    """Where undelivered alerts wait: beside a SQLite audit database, else in pneumolens' data folder."""
    from pneumolens.monitoring.audit import default_dir

    if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
        return Path(db_url.removeprefix("sqlite:///")).parent / "alerts-outbox"
    return default_dir() / "alerts-outbox"


@dataclass
class WebhookSender:
    """One POST of a kept alert (``pneumolens.integration.outbox``): taken on 2xx, else kept for the next run."""

    url: str
    kind: str = "alert"

    def __post_init__(self) -> None:
        self.where = where(self.url)

    def __call__(self, body: bytes) -> Answer:
        try:
            status = _post(self.url, body)
        except ConnectionError:
            return Answer("retry", "could not be reached")
        return Answer("delivered") if 200 <= status < 300 else Answer("retry", f"answered HTTP {status}")


def deliver(url: str, text: str | None, report: dict[str, Any], folder: Path) -> tuple[list[str], list[str]]:
    """Send the alerts kept in ``folder`` (each tried once, oldest first), then this one (``text``;
    None: none to send) with ``send``'s retries; keep it in ``folder`` when it cannot be delivered.
    Returns what to tell the user and what went wrong, a line each; never the URL's path or query."""
    said: list[str] = []
    problems: list[str] = []
    if folder.is_dir():
        kept = Outbox(folder, WebhookSender(url))
        if kept.waiting():
            kept.deliver()
            if kept.delivered:
                said.append(f"{kept.delivered} earlier alert(s) sent to {where(url)}")
            if still := len(kept.waiting()):
                problems.append(f"{still} earlier alert(s) still waiting in {folder}")
    if text is None:
        return said, problems
    try:
        attempts = send(url, text, report)
        said.append(f"alert sent to {where(url)}" + (f" (attempt {attempts})" if attempts > 1 else ""))
    except ConnectionError as e:
        stamp = datetime.now(UTC)
        late = f"{text} [first tried {stamp.isoformat(timespec='seconds')}; undelivered then]"
        body = json.dumps({"text": late, "source": "pneumolens", "report": report}).encode()
        Outbox(folder, WebhookSender(url)).put(stamp.strftime("%Y%m%dT%H%M%S%f"), body)
        problems.append(f"{e}; kept in {folder}, to be sent by the next run with --notify")
    return said, problems


def send(url: str, text: str, report: dict[str, Any]) -> int:
    """POST ``{"text": text, "source": "pneumolens", "report": report}``, again after each of
    ``RETRY_WAITS`` when there is no answer or the answer says to try later (HTTP 429 or 5xx): a
    webhook that is briefly down still gets it. Returns the attempts made; ``ConnectionError``
    naming the URL's host when it cannot be delivered (no answer or a 429/5xx on the last attempt,
    or any other answer than 2xx at once)."""
    body = json.dumps({"text": text, "source": "pneumolens", "report": report})
    check_url(url)
    waits, attempt = list(RETRY_WAITS), 0
    while True:
        attempt += 1
        try:
            status = _post(url, body.encode())
        except ConnectionError:
            if not waits:
                raise
        else:
            if 200 <= status < 300:
                return attempt
            if (status != 429 and status < 500) or not waits:
                raise ConnectionError(f"--notify {where(url)}: the alert was refused (HTTP {status})")
        time.sleep(waits.pop(0))


def exchange(request: urllib.request.Request, timeout: float, context=None) -> tuple[int, bytes]:
    """One HTTP request (to a webhook, a FHIR server, a token endpoint): the answer's status and body,
    an error status included; ``URLError`` or ``OSError`` when there is no answer."""
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310 - http(s)
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, data: bytes) -> int:
    """One POST; the HTTP status, or ``ConnectionError`` when there is no answer."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        return exchange(request, TIMEOUT_S)[0]
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"--notify {where(url)}: the alert could not be delivered ({reason})") from None
