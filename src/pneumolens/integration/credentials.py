"""A bearer token kept in a file (``--fhir-token-file``, ``--stow-token-file`` for what the node
sends, ``--dicomweb-token-file`` for what it takes): never on the command line, where ``ps`` shows
it, and read again whenever the file changes, so a job that renews the token (a cron line, a
cloud's credential helper) needs no restart of the node."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("pneumolens.integration.credentials")


class BearerAuth:
    """A requests ``auth`` hook: each request's ``Authorization`` from a token or the file that holds
    it (read again when the file changes), so a long-lived session takes a renewed token."""

    def __init__(self, token: str | TokenFile) -> None:
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = bearer(self.token)
        return request


def read_token(path: str, flag: str = "--fhir-token-file") -> str:
    """The bearer token in ``path`` (whitespace around it dropped), ``ValueError`` naming the flag."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{flag} {path}: expected one token on one line")
    return token


def bearer(token: str | TokenFile) -> str:
    """The ``Authorization`` header's value for ``token``, a token or the file that holds it."""
    return f"Bearer {token.value() if isinstance(token, TokenFile) else token}"


@dataclass
class TokenFile:
    """The token in ``path``, checked at once (``ValueError`` naming ``flag``) and read again when the
    file's modification time changes; a file that has become unreadable or empty keeps the last good
    token (the log says so, without the token)."""

    path: str
    flag: str
    _token: str = field(init=False, repr=False)
    _mtime: float = field(init=False, default=-1.0)

    def __post_init__(self) -> None:
        self._mtime = self._stat()
        self._token = read_token(self.path, self.flag)

    def _stat(self) -> float:
        try:
            return Path(self.path).stat().st_mtime
        except OSError:
            return -1.0

    def value(self) -> str:
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._token = read_token(self.path, self.flag)
            except ValueError as e:
                log.warning("%s; the last token read is kept", e)
        return self._token
