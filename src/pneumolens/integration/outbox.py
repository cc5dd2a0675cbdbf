"""Store and forward: what pneumolens sends to another system (the node's results to a FHIR server
or a RIS over HL7 v2, an audit alert to a webhook) waits in a folder until that system has taken
it, so none is lost while it is away.

Every message is first written to the outbox folder (atomically, named by its image's UID or its
time), then a ``Sender`` is handed it (by a background thread in the node, by the next run for an
alert) and it is deleted once the receiver has taken it. A receiver that does not answer, or asks
to wait: the message stays, and the whole outbox is tried again after ``retry_every`` seconds (and
at the node's next start), oldest first. A receiver that
refuses the message as it is (it would refuse it again): it moves to ``rejected/`` beside the
outbox, with the receiver's answer in ``NAME.answer``, and the log says so without quoting either.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pneumolens.checkpoint import atomic_write

log = logging.getLogger("pneumolens.integration.outbox")
RETRY_EVERY_S = 60.0


@dataclass(frozen=True)
class Answer:
    """What became of one message: taken, to be tried again, or refused for good."""

    outcome: Literal["delivered", "retry", "rejected"]
    why: str = ""  # for the log, in the receiver's terms ("HTTP 503", "AR"); never a value of the message
    body: bytes = b""  # the receiver's answer, kept beside a refused message


class Sender(Protocol):
    kind: str  # "fhir", "hl7": the log's prefix
    where: str  # the receiver, as the log may name it (no secrets)

    def __call__(self, body: bytes) -> Answer: ...


@dataclass
class Outbox:
    """Messages (``*SUFFIX`` files) waiting in ``folder`` for ``sender``."""

    folder: Path
    sender: Sender
    suffix: str = ".json"
    retry_every: float = RETRY_EVERY_S
    delivered: int = 0
    rejected: int = 0
    _wake: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, body: bytes) -> Path:
        """Queue ``body`` as ``NAME + suffix`` (atomically: a crash leaves it whole or absent) and
        wake the sender."""
        path = self.folder / f"{name}{self.suffix}"
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(body))
        self._wake.set()
        return path

    def waiting(self) -> list[Path]:
        """The queued messages, oldest first (temporary files of a write in progress are not)."""
        paths = [p for p in self.folder.glob(f"*{self.suffix}") if not p.name.startswith(".")]
        return sorted(paths, key=lambda p: (p.stat().st_mtime, p.name))

    def deliver(self) -> bool:
        """One pass over the outbox. Returns False when the receiver could not be reached or asked
        to wait (the rest stays for the next pass), True when the outbox was worked through."""
        with self._lock:  # one pass at a time: a message is never sent by two threads at once
            before = self.delivered
            try:
                return self._pass()
            finally:
                if self.delivered > before:
                    kind, n = self.sender.kind, self.delivered - before
                    log.info("%s: %d message(s) delivered to %s", kind, n, self.sender.where)

    def _pass(self) -> bool:
        """``deliver``'s pass, under its lock."""
        for path in self.waiting():
            try:
                body = path.read_bytes()
            except FileNotFoundError:  # taken by an earlier pass meanwhile
                continue
            try:
                answer = self.sender(body)
            except Exception as e:  # noqa: BLE001 - a sender's own failure must not end the outbox's thread
                answer = Answer("retry", f"could not be sent ({type(e).__name__})")
            if answer.outcome == "delivered":
                path.unlink(missing_ok=True)
                self.delivered += 1
            elif answer.outcome == "retry":
                kind, where, n = self.sender.kind, self.sender.where, len(self.waiting())
                log.warning("%s: %s %s; %d message(s) wait in the outbox", kind, where, answer.why, n)
                return False
            else:
                self._reject(path, answer)
        return True

    def _reject(self, path: Path, answer: Answer) -> None:
        rejected = self.folder / "rejected"
        rejected.mkdir(exist_ok=True)
        atomic_write(rejected / f"{path.stem}.answer", lambda tmp: Path(tmp).write_bytes(answer.body))
        path.replace(rejected / path.name)
        self.rejected += 1
        kind, where = self.sender.kind, self.sender.where
        log.error("%s: %s refused a message (%s); it is kept in %s with the answer", kind, where, answer.why, rejected)

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set: at once, whenever a message is queued, and every
        ``retry_every`` seconds. What is left at the stop stays for the next start."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.deliver()
            except OSError as e:  # the outbox folder itself: say so, keep the thread alive
                log.error("%s: outbox %s: %s", self.sender.kind, self.folder, e.strerror or e)
            self._wake.wait(self.retry_every)  # a queued message or the stop wakes it sooner

    def start(self, stop: threading.Event) -> threading.Thread:
        """``run`` in a daemon thread; ``stop`` (the method) ends it."""
        thread = threading.Thread(target=self.run, args=(stop,), name=f"{self.sender.kind}-outbox", daemon=True)
        thread.start()
        return thread

    def stop(self, stop: threading.Event, thread: threading.Thread, wait: float = 5.0) -> None:
        stop.set()
        self._wake.set()
        thread.join(wait)


def find(folder: Path) -> Path:
    """The outbox ``folder`` names: itself, its ``outbox/`` (``--fhir DIR``, ``--hl7 DIR``) or its
    ``stow-outbox/`` (the node's ``--out DIR``). ``FileNotFoundError`` naming it when it is none."""
    names = ("outbox", "alerts-outbox", "stow-outbox")
    for candidate in (folder / "outbox", folder / "stow-outbox", folder):
        if candidate.is_dir() and (candidate.name in names or (candidate / "rejected").is_dir()):
            return candidate
    raise FileNotFoundError(f"{folder}: not an outbox (nor a folder holding outbox/)")


def _messages(folder: Path) -> list[Path]:
    """The message files in ``folder`` (not answers, not temporary files), oldest first."""
    paths = [
        p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".answer")
    ]
    return sorted(paths, key=lambda p: (p.stat().st_mtime, p.name))


def summary(folder: Path) -> dict[str, object]:
    """How many messages wait and how many were refused, with the oldest of each (file names are
    UIDs or times, never a patient's), and nothing of their contents."""
    waiting, refused = _messages(folder), _messages(folder / "rejected") if (folder / "rejected").is_dir() else []

    def oldest(paths: list[Path]) -> str | None:
        if not paths:
            return None
        return datetime.fromtimestamp(paths[0].stat().st_mtime, UTC).isoformat(timespec="seconds")

    return {
        "waiting": len(waiting),
        "oldest_waiting": oldest(waiting),
        "refused": len(refused),
        "oldest_refused": oldest(refused),
    }


def requeue(folder: Path) -> int:
    """Move every refused message back into the outbox (its answer deleted), for after the cause was
    mended; the node's sender takes them at its next pass. Returns how many."""
    rejected = folder / "rejected"
    moved = 0
    for path in _messages(rejected) if rejected.is_dir() else []:
        path.replace(folder / path.name)
        (rejected / f"{path.stem}.answer").unlink(missing_ok=True)
        moved += 1
    return moved
