"""The audit trail: one row per prediction made by ``serve``, ``listen`` and ``watch``.

Rows hold what is needed to reconstruct a decision (time, source, the input's SHA-256, model name,
version and weight hash, preprocessing, probability, threshold, decision, flags, duration, the
film's measures behind the flags, a DICOM input's device make and model) and never a patient name
or ID, nor a file name (hospital file names often contain one). Where a result must be linked to a
study, a *salted* SHA-256 of the Study Instance UID is stored; the salt lives beside the default
database (or in ``$PNEUMOLENS_AUDIT_SALT``), so the hash cannot be reversed by hashing known UIDs
without it.

A clinician's read of an image or study (``review``) is a row too (source ``review``, decision
``reviewed``, the read in ``reader_label``), chained like the rest; ``pneumolens.monitoring.agreement`` pairs
the reads with the calls.

The store is an embedded SQLite file by default; any SQLAlchemy URL can replace it
(``$PNEUMOLENS_AUDIT_URL`` or ``--db``).

The rows form a hash chain, so the trail is tamper-evident: each row stores the previous row's hash
and an HMAC-SHA256 of that hash and its own content, and a one-row table holds
the newest hash (the head) and the hash before the oldest row kept (the anchor). ``verify`` walks
the chain: an altered row, a row removed from the middle or from the end, or a row inserted by hand
breaks it, and the report names the row. Writers serialise on the head row (any database), so
several processes (``serve``, ``listen``, ``watch``) can share one trail. ``prune`` removes the oldest
rows for a retention policy, moves the anchor, and leaves a chained row saying what it removed.
Rows written before the chain existed (an older pneumolens) are kept and reported as unverifiable.
A deleted head record is rebuilt from the rows with a chained row saying so, which ``verify`` reports.

The HMAC key is not the salt: whoever may match study hashes (and so holds the salt) cannot also
rewrite the chain. It is ``$PNEUMOLENS_AUDIT_KEY``, else a random key kept (mode 0600) in
``audit.key`` beside a SQLite database. A trail chained before the two were kept apart (no
``audit.key`` beside it, no key in the environment) goes on with its salt, so that it still verifies.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

AUDIT_URL_ENV = "PNEUMOLENS_AUDIT_URL"
AUDIT_SALT_ENV = "PNEUMOLENS_AUDIT_SALT"
AUDIT_KEY_ENV = "PNEUMOLENS_AUDIT_KEY"

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("time", sa.String(32), nullable=False, index=True),  # ISO 8601, UTC
    sa.Column("source", sa.String(16), nullable=False),  # serve | listen | watch | review | audit (a prune)
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("study_hash", sa.String(64)),  # salted SHA-256 of the Study Instance UID, when there is one
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.String(32)),
    sa.Column("model_sha256", sa.String(64)),
    sa.Column("preprocessing", sa.Text),  # JSON
    sa.Column("probability", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("decision", sa.String(16)),  # NORMAL | PNEUMONIA | refused | reviewed | pruned | rebuilt
    sa.Column("flags", sa.Text),  # JSON list
    sa.Column("error", sa.Text),  # why the input was refused; for the trail's own rows, what happened
    sa.Column("duration_ms", sa.Float),
    sa.Column("measures", sa.Text),  # JSON: the film's measures behind the flags (lung_median, noise, ...)
    sa.Column("device", sa.String(128)),  # a DICOM input's Manufacturer and ManufacturerModelName
    sa.Column("reader_label", sa.String(16)),  # a review row's: the clinician's read, NORMAL | PNEUMONIA
    sa.Column("prev_hash", sa.String(64)),  # the previous row's row_hash (the anchor for the oldest row)
    sa.Column("row_hash", sa.String(64)),  # HMAC-SHA256(key, prev_hash + this row's content)
)
COLUMNS = [c.name for c in predictions.columns]
HASHED = [c for c in COLUMNS if c not in ("id", "prev_hash", "row_hash")]
# added after the chain existed: hashed only when set, so older rows still verify
LATER = ("measures", "device", "reader_label")
chain = sa.Table(
    "audit_chain",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: one row
    sa.Column("head", sa.String(64), nullable=False),  # row_hash of the newest row
    sa.Column("anchor", sa.String(64), nullable=False),  # prev_hash of the oldest chained row kept
)
GENESIS = "0" * 64
READS = ("NORMAL", "PNEUMONIA")  # a prediction's call, and a clinician's read in a review
REBUILT = (
    "the chain's head record had been deleted and was rebuilt here (rows removed from the end before it would not show)"
)


@dataclass
class ChainReport:
    """What ``AuditLog.verify`` found: ``problem`` is None when the chain is intact."""

    chained: int  # rows whose hash and link were checked
    unchained: int  # rows from before the chain existed: kept, not verifiable
    problem: str | None = None

    def __str__(self) -> str:
        old = f" ({self.unchained} older row(s) from before the chain, not verifiable)" if self.unchained else ""
        if self.problem is None:
            return f"audit trail intact: {self.chained} chained row(s){old}"
        return f"audit trail BROKEN: {self.problem} ({self.chained} chained row(s) verified up to there){old}"


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "pneumolens"


def default_url() -> str:
    return os.environ.get(AUDIT_URL_ENV) or f"sqlite:///{default_dir() / 'audit.sqlite'}"


def hashed_content(row: Mapping[str, Any]) -> str:
    """The part of a row its hash covers, as canonical JSON: every column but the id and the two hashes
    (a column of ``LATER`` only when set)."""
    fields = {c: row.get(c) for c in HASHED if c not in LATER or row.get(c) is not None}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """Appends to, verifies and prunes the audit table. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url)
        metadata.create_all(self.engine)
        self._add_missing_columns()
        self._salt: bytes | None = None
        self.keyed_with_salt = False  # a trail chained before the key and the salt were kept apart
        self._key = self._chain_key()
        self._lock = threading.Lock()
        try:
            with self.engine.begin() as conn:
                self._ensure_head(conn)
        except sa.exc.IntegrityError:  # another process created it at the same moment
            pass

    def _add_missing_columns(self) -> None:
        """A trail made by an older pneumolens lacks the hash columns, the measures, the device or the
        reader's label: add
        them (its rows stay unchained, or chained as they were)."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns("predictions")}
        added = {
            "prev_hash": "VARCHAR(64)",
            "row_hash": "VARCHAR(64)",
            "measures": "TEXT",
            "device": "VARCHAR(128)",
            "reader_label": "VARCHAR(16)",
        }
        for name, kind in added.items():
            if name not in have:
                try:
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
                except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # added by another process meanwhile
                    if name not in {c["name"] for c in sa.inspect(self.engine).get_columns("predictions")}:
                        raise

    def _secret_path(self, name: str) -> Path:
        """Where a secret of this trail lives: beside a SQLite database, else in the default directory."""
        here = Path(self.url.removeprefix("sqlite:///")).parent if self.url.startswith("sqlite:///") else None
        return (here or default_dir()) / name

    def _secret(self, env: str, name: str) -> bytes:
        """``$env``, else the random secret in the file ``name`` (created with mode 0600 when missing)."""
        if os.environ.get(env):
            return os.environ[env].encode()
        path = self._secret_path(name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:  # written whole, then linked in place: a process starting at the same moment reads one secret
                os.link(tmp, path)
            except FileExistsError:  # that process linked its own first: both use it
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()

    def salt(self) -> bytes:
        """``$PNEUMOLENS_AUDIT_SALT``, else a random salt kept (mode 0600) beside a SQLite database."""
        if self._salt is None:
            self._salt = self._secret(AUDIT_SALT_ENV, "audit.salt")
        return self._salt

    def _chain_key(self) -> bytes:
        """The chain's HMAC key: ``$PNEUMOLENS_AUDIT_KEY``, else ``audit.key`` (created for a trail with no
        chained row yet); the salt for a trail chained before the two were kept apart."""
        if not os.environ.get(AUDIT_KEY_ENV) and not self._secret_path("audit.key").exists():
            with self.engine.connect() as conn:
                chained = conn.execute(sa.select(predictions.c.id).where(predictions.c.row_hash.is_not(None)).limit(1))
                if chained.first() is not None:
                    self.keyed_with_salt = True
                    log.info("audit trail %s: chained with its salt (made before pneumolens kept them apart)", self.url)
                    return self.salt()
        return self._secret(AUDIT_KEY_ENV, "audit.key")

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
        device: str | None = None,
    ) -> None:
        """One row. ``model``: name, version, sha256, preprocessing; ``result``: probability,
        threshold, label, flags, measures; ``device``: a DICOM input's (``device_of``). Pass
        ``connection`` to write inside the caller's transaction."""
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
            "measures": json.dumps(result["measures"], sort_keys=True) if result.get("measures") else None,
            "device": device,
        }
        if connection is not None:
            self._append(connection, row)
            return
        with self._lock, self.engine.begin() as conn:
            self._append(conn, row)

    def review(self, label: str, input_sha256: str | None = None, study_uid: str | None = None) -> dict[str, Any]:
        """Record a clinician's read (``label``: NORMAL or PNEUMONIA) of an image (its SHA-256) or a
        study (its Study Instance UID, stored salted and hashed) the trail holds a prediction for, as a
        chained row (source ``review``). Returns the newest such prediction (the one read; for a
        study, its newest image's). Raises ``ValueError`` for another label or neither key, and
        ``LookupError`` when the trail holds no prediction for it."""
        if label not in READS:
            raise ValueError(f"label {label!r}: give one of {', '.join(READS)}")
        if bool(input_sha256) == bool(study_uid):
            raise ValueError("name the image (its SHA-256) or the study (its Study Instance UID), one of the two")
        study = self.study_hash(study_uid)
        key = predictions.c.input_sha256 == input_sha256 if input_sha256 else predictions.c.study_hash == study
        with self._lock, self.engine.begin() as conn:
            read = sa.select(predictions).where(key, predictions.c.decision.in_(READS))
            found = conn.execute(read.order_by(predictions.c.id.desc()).limit(1)).mappings().first()
            if found is None:
                what = f"image {input_sha256[:16]}..." if input_sha256 else "study"
                raise LookupError(f"the audit trail holds no prediction for this {what}: nothing to review")
            row = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "source": "review",
                "input_sha256": input_sha256 or "",
                "study_hash": study,
                "decision": "reviewed",
                "flags": "[]",
                "reader_label": label,
            }
            self._append(conn, row)
        return dict(found)

    def _ensure_head(self, conn: sa.Connection) -> None:
        """Create the chain's head record for a new (or pre-chain) trail. If it is missing while chained
        rows exist, someone deleted it (with it, rows removed from the end would not show): rebuild it
        from the rows and append a chained row that says so, which ``verify`` reports from then on."""
        if conn.execute(sa.select(chain.c.id)).first() is not None:
            return
        hashed = sa.select(predictions.c.row_hash, predictions.c.prev_hash).where(predictions.c.row_hash.is_not(None))
        last = conn.execute(hashed.order_by(predictions.c.id.desc()).limit(1)).first()
        if last is None:
            conn.execute(chain.insert().values(id=1, head=GENESIS, anchor=GENESIS))
            return
        first = conn.execute(hashed.order_by(predictions.c.id).limit(1)).one()
        conn.execute(chain.insert().values(id=1, head=last.row_hash, anchor=first.prev_hash))
        log.warning("audit trail %s: the chain's head record was missing; rebuilt and recorded", self.url)
        self._append(conn, self._note("rebuilt", REBUILT, GENESIS))

    @staticmethod
    def _note(decision: str, text: str, digest: str) -> dict[str, Any]:
        """A row the trail writes about itself (source ``audit``)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return {
            "time": now,
            "source": "audit",
            "input_sha256": digest,
            "decision": decision,
            "flags": "[]",
            "error": text,
        }

    def _row_hash(self, prev: str, row: Mapping[str, Any]) -> str:
        return hmac.new(self._key, (prev + hashed_content(row)).encode(), hashlib.sha256).hexdigest()

    def _lock_head(self, conn: sa.Connection) -> str:
        """Take the write lock on the chain's head row (a no-op update: SQLite's write lock, a row lock
        elsewhere), so no other writer can append until this transaction ends; return the head."""
        conn.execute(chain.update().where(chain.c.id == 1).values(head=chain.c.head))
        return conn.execute(sa.select(chain.c.head).where(chain.c.id == 1)).scalar_one()

    def _append(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        prev = self._lock_head(conn)
        row = {**row, "prev_hash": prev, "row_hash": self._row_hash(prev, row)}
        conn.execute(predictions.insert().values(**row))
        conn.execute(chain.update().where(chain.c.id == 1).values(head=row["row_hash"]))

    def verify(self) -> ChainReport:
        """Walk the chain from the anchor: every row's link and hash, and the head must be one of them.

        Rows appended while this runs come after the head it read, so a live trail verifies too."""
        with self.engine.connect() as conn:
            head, anchor = conn.execute(sa.select(chain.c.head, chain.c.anchor).where(chain.c.id == 1)).one()
            prev, chained, unchained, head_seen = anchor, 0, 0, head == anchor
            for r in conn.execute(sa.select(predictions).order_by(predictions.c.id)).mappings():
                problem = None
                if r["row_hash"] is None:
                    if not chained:
                        unchained += 1
                        continue
                    problem = "has no hash but follows chained rows (written by hand?)"
                elif r["prev_hash"] != prev:
                    problem = "does not link to the row before it (rows were removed)"
                elif not hmac.compare_digest(self._row_hash(prev, dict(r)), r["row_hash"]):
                    problem = "was altered (its content does not match its hash)"
                elif r["source"] == "audit" and r["decision"] == "rebuilt":
                    problem = f"says that {REBUILT}"
                if problem:
                    return ChainReport(chained, unchained, f"row {r['id']} {problem}")
                prev, chained = r["row_hash"], chained + 1
                head_seen = head_seen or prev == head
        if not head_seen:
            return ChainReport(chained, unchained, "the newest row(s) were removed (the recorded head is missing)")
        return ChainReport(chained, unchained)

    def prune(self, before: datetime) -> int:
        """Remove the rows dated before ``before`` (the oldest run of the trail: a row is never removed
        while an older-numbered one is kept), move the anchor, and append a chained row that says how
        many were removed and up to which hash. Returns the number removed."""
        cutoff = before.astimezone(UTC).isoformat(timespec="milliseconds")
        with self._lock, self.engine.begin() as conn:
            self._lock_head(conn)
            kept = sa.select(sa.func.min(predictions.c.id)).where(predictions.c.time >= cutoff)
            first_kept = conn.execute(kept).scalar()
            q = sa.select(predictions.c.id, predictions.c.row_hash).order_by(predictions.c.id.desc()).limit(1)
            last = conn.execute(q if first_kept is None else q.where(predictions.c.id < first_kept)).first()
            if last is None:
                return 0
            removed = conn.execute(predictions.delete().where(predictions.c.id <= last.id)).rowcount
            anchor = conn.execute(sa.select(chain.c.anchor).where(chain.c.id == 1)).scalar_one()
            if last.row_hash is not None:  # chained rows went: the oldest one kept links to this hash
                anchor = last.row_hash
                conn.execute(chain.update().where(chain.c.id == 1).values(anchor=anchor))
            text = f"{removed} row(s) dated before {cutoff} removed, up to the row hashed {anchor}"
            self._append(conn, self._note("pruned", text, anchor))
        return removed

    def review_rows(self, since: datetime | None = None) -> list[dict]:
        """The reviews dated at or after ``since`` (all without it) and, of any date, the rows of the
        images and studies they name, oldest first: what ``pneumolens.monitoring.agreement`` pairs, read without
        the rest of the trail."""
        c = predictions.c
        recent = [c.source == "review"]
        if since is not None:
            recent.append(c.time >= since.astimezone(UTC).isoformat(timespec="milliseconds"))
        images = sa.select(c.input_sha256).where(*recent, c.input_sha256 != "")
        studies = sa.select(c.study_hash).where(*recent, c.input_sha256 == "", c.study_hash.is_not(None))
        named = sa.or_(c.input_sha256.in_(images), c.study_hash.in_(studies))
        q = sa.select(predictions).where(sa.or_(sa.and_(*recent), sa.and_(c.source != "review", named)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(c.id))]

    def rows(
        self,
        since: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        before: datetime | None = None,
    ) -> list[dict]:
        """Rows dated at or after ``since`` and before ``before`` (either may be None), oldest first."""
        q = sa.select(predictions)
        if since is not None:
            q = q.where(predictions.c.time >= since.astimezone(UTC).isoformat(timespec="milliseconds"))
        if before is not None:
            q = q.where(predictions.c.time < before.astimezone(UTC).isoformat(timespec="milliseconds"))
        q = q.order_by(predictions.c.id.desc() if newest_first else predictions.c.id)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]


def parse_since(text: str, flag: str = "--since") -> datetime:
    """``2026-11-27``, ``2026-11-27T10:00`` (UTC unless a zone is given), or ``30m`` / ``12h`` / ``7d`` ago."""
    text = text.strip()
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give an ISO date/time (2026-11-27T10:00) or 30m, 12h, 7d") from None
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
