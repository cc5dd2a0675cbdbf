"""``pneumolens watch DIR``: score every JPEG, PNG, TIFF or DICOM file that appears in a folder, once.

Each file is processed when its size and modification time have stayed the same for one poll
(so a file still being copied is not read half-written). Its result is written atomically as
``OUT/<relative path>.json``; then, in **one database transaction**, the file is marked done and
its audit row is written. A crash or kill at any point therefore leaves either both or neither: on
restart the file is either skipped or processed again from scratch, never counted twice and never
missed. With ``send_on`` (``--fhir``, ``--fhir-url``, ``--hl7``, ``--hl7-to``) a DICOM file's result
is also sent on to the EHR and the RIS (``pneumolens.integration.send_on``), queued before that transaction: a
crash between the two sends it again on restart (the FHIR entries are conditional creates; an HL7
receiver sees a second message for the image). Files are identified by a hash of their path and
their content's SHA-256 (no file name is stored: hospital file names often contain patient names);
a file replaced by new content is new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from pneumolens.checkpoint import atomic_write
from pneumolens.data.dicom import device_of, header_dataset
from pneumolens.data.images import OUT_OF_SCOPE, ImageReadError, read_image
from pneumolens.data.scope import header_flags
from pneumolens.data.sources import image_files
from pneumolens.integration.send_on import SendOn
from pneumolens.monitoring.audit import AuditLog, metadata, sha256_bytes

log = logging.getLogger(__name__)
NOTICE = "Decision support only: a first read by a model, to inform a clinician; not a diagnosis."

seen = sa.Table(
    "watch_seen",
    metadata,
    sa.Column("path_hash", sa.String(64), primary_key=True),
    sa.Column("content_sha256", sa.String(64), primary_key=True),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # NORMAL | PNEUMONIA | refused | out of scope
)


@dataclass
class Watcher:
    folder: Path
    out: Path
    engine: object  # pneumolens.service.engine.Engine
    audit: AuditLog
    explain: bool = False
    send_on: SendOn = field(default_factory=SendOn)  # a DICOM file's result also to the EHR and the RIS
    processed: int = 0
    _sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    _left_out: int = 0  # the folder's files of other kinds at the last poll
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.folder, self.out = Path(self.folder).resolve(), Path(self.out).resolve()
        metadata.create_all(self.audit.engine)

    def candidates(self) -> list[Path]:
        """Image files under the folder (not hidden, not in the output folder), sorted. The count of the
        folder's other files is logged whenever it changes, without their names (hospital file names
        often hold patient names): a site that drops a ``.bmp`` there learns why it gets no result."""
        left_out: list[Path] = []
        found = image_files(self.folder, exclude=self.out, left_out=left_out)
        if len(left_out) != self._left_out:
            self._left_out = len(left_out)
            if left_out:
                log.warning(
                    "watch: %d file(s) in the folder are not JPEG, PNG, TIFF or DICOM by their name or DICOM mark "
                    "and are not read (their names are not logged)",
                    len(left_out),
                )
        return found

    def ready(self, path: Path) -> bool:
        """Unchanged since the previous poll (size and mtime): not still being written."""
        try:
            st = path.stat()
        except OSError:
            return False
        now = (st.st_size, st.st_mtime_ns)
        before = self._sizes.get(str(path))
        self._sizes[str(path)] = now
        return before == now

    def _done(self, conn: sa.Connection, path_hash: str, content: str) -> bool:
        q = sa.select(seen.c.outcome).where(seen.c.path_hash == path_hash, seen.c.content_sha256 == content)
        return conn.execute(q).first() is not None

    def process(self, path: Path) -> bool:
        """Score one file unless it was done before; True if it was processed now."""
        rel = path.relative_to(self.folder)
        path_hash = hashlib.sha256(str(rel).encode("utf-8", "surrogateescape")).hexdigest()
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("watch: cannot read a file (%s); will retry", type(e).__name__)
            return False
        content = sha256_bytes(data)
        with self.audit.engine.connect() as conn:
            if self._done(conn, path_hash, content):
                return False
        t0 = time.perf_counter()
        try:
            result = self.engine.analyse(read_image(path, data=data), self.explain, from_header=header_flags(data))
            kept = ("probability", "label", "threshold", "decision", "flags", "warning", "measures")
            record = {k: result[k] for k in kept}
            record.update(
                model=result["model"], lung_fraction=result["lung_fraction"], heatmap_png=result["heatmap_png"]
            )
            error, outcome = None, result["label"]
        except ImageReadError as e:  # out of scope (a lateral view, a knee): not read, said so like a refusal
            error = e.audited
            result, record, outcome = None, {"error": error}, OUT_OF_SCOPE if e.out_of_scope else "refused"
        record.update(input_sha256=content, notice=NOTICE)
        target = self.out / rel.parent / (rel.name + ".json")
        atomic_write(target, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
        if result is not None and self.send_on.active and (header := header_dataset(data)) is not None:
            self.send_on.send(result, header, data)  # a JPEG or PNG names no study or patient: not sent on
        ms = 1000 * (time.perf_counter() - t0)
        with self.audit.engine.begin() as conn:  # done-mark and audit row: both or neither
            if self._done(conn, path_hash, content):
                return False
            conn.execute(
                seen.insert().values(
                    path_hash=path_hash,
                    content_sha256=content,
                    time=time.strftime("%FT%TZ", time.gmtime()),
                    outcome=outcome,
                )
            )
            model = self.engine.audit_model
            self.audit.record(
                "watch", content, model, result, error=error, duration_ms=ms, connection=conn, device=device_of(data)
            )
        self.processed += 1
        log.info("watch: file %s… -> %s (%.0f ms)", content[:12], outcome, ms)  # no file names in logs
        return True

    def poll_once(self, settle: bool = True) -> int:
        n = 0
        for path in self.candidates():
            if self.stop.is_set():
                break
            if (not settle or self.ready(path)) and self.process(path):
                n += 1
        return n

    def run(self, poll_seconds: float = 1.0) -> None:
        """Poll until SIGINT / SIGTERM (finishing the file in hand) or ``stop`` is set."""

        def handle(signum, frame) -> None:
            log.info("watch: stopping after the current file")
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handle)
        self.out.mkdir(parents=True, exist_ok=True)
        log.info("watching %s; results in %s", self.folder, self.out)
        sender_stop, senders = self.send_on.start()
        try:
            while not self.stop.is_set():
                self.poll_once()
                self.stop.wait(poll_seconds)
        finally:
            self.send_on.stop(sender_stop, senders)  # what is not taken waits for the next start
