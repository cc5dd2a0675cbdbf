"""A drift alert sent where people look: an HTTP POST of JSON to a webhook (``audit --drift --notify URL``).

The body carries a one-line ``text`` (what Slack, Mattermost, Microsoft Teams' incoming webhooks
and most chat and paging bridges show as the message) and the whole report under ``report``
(``DriftReport.as_dict``: both windows' counts, every measure and its p-value, the notes). Only
aggregates leave the machine: the audit trail holds no patient identifiers. Standard library only
(``urllib``): one POST needs no client library.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pneumolens.monitor import DriftReport

TIMEOUT_S = 10.0


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


def notify(url: str, report: DriftReport, device: str | None = None) -> None:
    """POST the alert; ``ConnectionError`` naming the URL's host when it cannot be delivered (no
    answer, or an answer other than 2xx)."""
    body = json.dumps({"text": alert_text(report, device), "source": "pneumolens", "report": report.as_dict()})
    request = urllib.request.Request(
        check_url(url), data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310 - http(s) checked above
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"--notify {where(url)}: the alert could not be delivered ({reason})") from None
    if not 200 <= status < 300:
        raise ConnectionError(f"--notify {where(url)}: the alert was refused (HTTP {status})")
