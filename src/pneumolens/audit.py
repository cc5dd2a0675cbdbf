"""The audit trail: one row per prediction made by ``serve``, ``listen`` and ``watch``.

Rows hold what is needed to reconstruct a decision (time, source, the input's SHA-256, model name,
version and weight hash, preprocessing, probability, threshold, decision, flags, duration) and
never a patient name or ID, nor a file name (hospital file names often contain one). Where a
result must be linked to a study, a *salted* SHA-256 of the Study Instance UID is stored; the salt
lives beside the default database (or in ``$PNEUMOLENS_AUDIT_SALT``), so the hash cannot be
reversed by hashing known UIDs without it.

The store is an embedded SQLite file by default; any SQLAlchemy URL can replace it
(``$PNEUMOLENS_AUDIT_URL`` or ``--db``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

AUDIT_URL_ENV = "PNEUMOLENS_AUDIT_URL"
AUDIT_SALT_ENV = "PNEUMOLENS_AUDIT_SALT"

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("time", sa.String(32), nullable=False, index=True),  # ISO 8601, UTC
    sa.Column("source", sa.String(16), nullable=False),  # serve | listen | watch
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("study_hash", sa.String(64)),  # salted SHA-256 of the Study Instance UID, when there is one
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.String(32)),
    sa.Column("model_sha256", sa.String(64)),
    sa.Column("preprocessing", sa.Text),  # JSON
    sa.Column("probability", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("decision", sa.String(16)),  # NORMAL | PNEUMONIA | refused
    sa.Column("flags", sa.Text),  # JSON list
    sa.Column("error", sa.Text),  # why the input was refused
    sa.Column("duration_ms", sa.Float),
)
COLUMNS = [c.name for c in predictions.columns]


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "pneumolens"


def default_url() -> str:
    return os.environ.get(AUDIT_URL_ENV) or f"sqlite:///{default_dir() / 'audit.sqlite'}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """Append-only access to the audit table. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url)
        metadata.create_all(self.engine)
        self._salt: bytes | None = None
        self._lock = threading.Lock()

    def salt(self) -> bytes:
        """``$PNEUMOLENS_AUDIT_SALT``, else a random salt kept (mode 0600) beside a SQLite database."""
        if self._salt is None:
            if os.environ.get(AUDIT_SALT_ENV):
                self._salt = os.environ[AUDIT_SALT_ENV].encode()
            else:
                here = Path(self.url.removeprefix("sqlite:///")).parent if self.url.startswith("sqlite:///") else None
                path = (here or default_dir()) / "audit.salt"
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(secrets.token_hex(32))
                self._salt = path.read_text().strip().encode()
        return self._salt

    def study_hash(self, study_uid: str | None) -> str | None:
        if not study_uid:
            return None
        return hashlib.sha256(self.salt() + str(study_uid).encode()).hexdigest()

    def record(
        self,
        source: str,
        input_sha256: str,
        model: dict[str, Any] | None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        study_uid: str | None = None,
        duration_ms: float | None = None,
        connection: sa.Connection | None = None,
    ) -> None:
        """One row. ``model``: name, version, sha256, preprocessing; ``result``: probability,
        threshold, label, flags. Pass ``connection`` to write inside the caller's transaction."""
        model = model or {}
        result = result or {}
        row = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "source": source,
            "input_sha256": input_sha256,
            "study_hash": self.study_hash(study_uid),
            "model_name": model.get("name"),
            "model_version": model.get("version"),
            "model_sha256": model.get("sha256"),
            "preprocessing": json.dumps(model.get("preprocessing"), sort_keys=True) if model else None,
            "probability": result.get("probability"),
            "threshold": result.get("threshold"),
            "decision": "refused" if error else result.get("label"),
            "flags": json.dumps(result.get("flags", [])),
            "error": error,
            "duration_ms": duration_ms,
        }
        if connection is not None:
            connection.execute(predictions.insert().values(**row))
            return
        with self._lock, self.engine.begin() as conn:
            conn.execute(predictions.insert().values(**row))

    def rows(self, since: datetime | None = None, limit: int | None = None, newest_first: bool = False) -> list[dict]:
        q = sa.select(predictions)
        if since is not None:
            q = q.where(predictions.c.time >= since.astimezone(UTC).isoformat(timespec="milliseconds"))
        q = q.order_by(predictions.c.id.desc() if newest_first else predictions.c.id)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]


def parse_since(text: str) -> datetime:
    """``2026-11-27``, ``2026-11-27T10:00`` (UTC unless a zone is given), or ``30m`` / ``12h`` / ``7d`` ago."""
    text = text.strip()
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give an ISO date/time (2026-11-27T10:00) or 30m, 12h, 7d") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def write_csv(rows: Iterable[dict], out) -> None:
    w = csv.DictWriter(out, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow(r)


def format_table(rows: list[dict]) -> str:
    lines = ["time                          source  decision   prob    flags                 input sha256"]
    for r in rows:
        prob = "" if r["probability"] is None else f"{r['probability']:.3f}"
        flags = ",".join(json.loads(r["flags"] or "[]"))
        lines.append(
            f"{r['time']:<29} {r['source']:<7} {r['decision'] or '':<10} {prob:<7} {flags:<21} {r['input_sha256'][:16]}"
        )
    return "\n".join(lines)
