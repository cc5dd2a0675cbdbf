"""How the model's calls agree with the clinicians' reads recorded in the audit trail.

The drift check (``pneumolens.monitoring.drift``) watches the inputs and calls without labels; this watches
the calls against the reads that clinicians record afterwards (``pneumolens review``, ``POST
/api/v1/review``, the web page's buttons): with the read as the reference, the model's sensitivity,
specificity, predictive values and agreement, each with a Wilson 95% interval, and Cohen's kappa,
per model (weight hash) and over all. It is a site's running check on its own films, not a
validation study: reviewed films are those somebody chose to review, and a read made after seeing
the model's call is not blind to it.

A review of an image pairs with the newest prediction for that image (its SHA-256) before the
review; a review of a study pairs with the study's predictions before it, the study called
PNEUMONIA when any of its images was (a study's views are read together). A later review of the
same image or study replaces an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pneumolens.monitoring.audit import READS, AuditLog, sha256_bytes

NORMAL, PNEUMONIA = READS


@dataclass
class Pair:
    model_call: str  # NORMAL | PNEUMONIA
    reader: str  # NORMAL | PNEUMONIA
    model_sha256: str
    device: str = "not DICOM"  # the reviewed prediction's DICOM device (make and model), as the trail keeps it


@dataclass
class Agreement:
    """The paired calls and reads, and the reviews that found no prediction (pruned since)."""

    pairs: list[Pair] = field(default_factory=list)
    unmatched: int = 0

    def table(self, by: str = "model") -> list[dict[str, Any]]:
        """One row per model (weight hash, 12 hex digits), or with ``by="device"`` per DICOM device, then
        one for all when there are several."""
        if by not in ("model", "device"):
            raise ValueError(f"by {by!r}: model or device")
        key = (lambda p: p.model_sha256[:12]) if by == "model" else (lambda p: p.device)
        groups = [(k, [p for p in self.pairs if key(p) == k]) for k in sorted({key(p) for p in self.pairs})]
        if len(groups) > 1:
            groups.append((f"all {by}s", self.pairs))
        return [{by: name, **summary(pairs)} for name, pairs in groups]

    def __str__(self) -> str:
        return self.render()

    def render(self, by: str = "model") -> str:
        """The table as markdown, one row per model or per device (``table``), and what it is not."""
        if not self.pairs:
            return "no reviewed predictions" + (f" ({self.unmatched} review(s) without one)" if self.unmatched else "")
        head = [by, "reviewed", "reads of pneumonia", "sensitivity", "specificity", "PPV", "NPV", "agreement"]
        lines = ["| " + " | ".join([*head, "kappa"]) + " |", "|---" * (len(head) + 1) + "|"]
        for row in self.table(by):
            cells = [_rate(row[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "agreement")]
            kappa = "" if row["kappa"] is None else f"{row['kappa']:.2f}"
            lines.append(f"| {row[by]} | {row['n']} | {row['reads_pneumonia']} | {' | '.join(cells)} | {kappa} |")
        lines.append(
            "the clinicians' reads as the reference; Wilson 95% intervals; reviewed films are those somebody chose "
            "to review, read after seeing the model's call: a site's running check, not a validation study"
        )
        if self.unmatched:
            lines.append(f"{self.unmatched} review(s) found no prediction (pruned from the trail since): left out")
        return "\n".join(lines)


MIN_READS = 10  # reads a rate needs (its denominator) before its floor is tested


def check_floors(
    table: list[dict[str, Any]], floors: dict[str, float], min_reads: int = MIN_READS
) -> tuple[list[str], list[str]]:
    """The rates of ``table`` (``Agreement.table``) credibly below their floor (the upper end of the
    Wilson 95% interval under it, so that a few unlucky reads raise nothing), and those with fewer
    than ``min_reads`` reads to test (a single missed pneumonia would otherwise put a sensitivity of
    0/1, [0, 79%], under a floor of 90%). One sentence each."""
    below, untested = [], []
    for row in table:
        of = f"model {row['model']}" if "model" in row else f"device {row['device']}"
        for rate, floor in floors.items():
            cell = row[rate]
            if cell is None or cell["n"] < min_reads:
                n = 0 if cell is None else cell["n"]
                untested.append(f"{rate} of {of}: {n} read(s), {min_reads} needed to test the floor")
            elif cell["high"] < floor:
                below.append(f"{rate} of {of}: {_rate(cell)}, below the floor of {100 * floor:g}%")
    return below, untested


@dataclass
class Read:
    """One row of a reads file: the clinician's ``label`` of an image (its SHA-256) or a study."""

    row: int  # the file's line number, for messages that must not quote a path or UID
    label: str
    input_sha256: str | None = None
    study_uid: str | None = None


def read_reads(path: Path) -> list[Read]:
    """A CSV of reads (a RIS export, say): a ``label`` column (NORMAL or PNEUMONIA) and, per row, one
    of ``sha256`` (as ``audit`` lists it), ``path`` (an image file, relative to the CSV) or ``study``
    (a Study Instance UID). Every row is checked before any is recorded; an error names the row and
    column, never the value (a path or UID can identify a patient)."""
    import csv
    import re

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error):
        raise ValueError(f"{path}: not a UTF-8 CSV file") from None
    if not rows or "label" not in rows[0] or not {"sha256", "path", "study"} & set(rows[0]):
        raise ValueError(f"{path}: expected a header with label and one of sha256, path, study")
    reads = []
    for line, row in enumerate(rows, start=2):
        keys = {k: (row.get(k) or "").strip() for k in ("sha256", "path", "study")}
        given = [k for k, v in keys.items() if v]
        label = (row.get("label") or "").strip().upper()
        if label not in READS:
            raise ValueError(f"{path}, row {line}: label must be NORMAL or PNEUMONIA")
        if len(given) != 1:
            raise ValueError(f"{path}, row {line}: give one of sha256, path, study (found {len(given)})")
        digest, study = None, None
        if given == ["sha256"]:
            digest = keys["sha256"].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{path}, row {line}: sha256 is not 64 hex digits")
        elif given == ["path"]:
            image = path.parent / keys["path"]
            if not image.is_file():
                raise FileNotFoundError(f"{path}, row {line}: the path names no file")
            digest = sha256_bytes(image.read_bytes())
        else:
            study = keys["study"]
        reads.append(Read(line, label, digest, study))
    return reads


def record_reads(audit: AuditLog, reads: list[Read]) -> tuple[int, list[int]]:
    """Record each read the trail holds a prediction for; the count recorded, and the rows of those it
    does not (nothing to review)."""
    recorded, missing = 0, []
    for r in reads:
        try:
            audit.review(r.label, input_sha256=r.input_sha256, study_uid=r.study_uid)
            recorded += 1
        except LookupError:
            missing.append(r.row)
    return recorded, missing


def agreement_in(audit: AuditLog, since: datetime | None = None) -> Agreement:
    """The reviews in ``audit`` dated at or after ``since`` (all without it), paired with the
    predictions they review (which may be older)."""
    start = since.astimezone(UTC).isoformat(timespec="milliseconds") if since else None
    return pair_reviews(audit.review_rows(since), start)


def pair_reviews(rows: Iterable[Mapping[str, Any]], since: str | None = None) -> Agreement:
    """Pair each review row (``AuditLog.rows``, oldest first) dated at or after ``since`` (an ISO time,
    as the trail writes it) with the prediction(s) it reviews."""
    by_image: dict[str, Mapping[str, Any]] = {}
    by_study: dict[str, list[Mapping[str, Any]]] = {}
    reviewed: dict[tuple[str, str], Pair] = {}
    out = Agreement()
    for r in rows:
        if r.get("source") != "review" and r.get("decision") in READS:
            by_image[r["input_sha256"]] = r
            if r.get("study_hash"):
                by_study.setdefault(r["study_hash"], []).append(r)
            continue
        if r.get("source") != "review" or r.get("reader_label") not in READS or (since and r["time"] < since):
            continue
        image, study = r.get("input_sha256") or "", r.get("study_hash") or ""
        if image:
            key, found = ("image", image), [by_image[image]] if image in by_image else []
        else:
            key, found = ("study", study), by_study.get(study, [])
        if not found:
            out.unmatched += 1
            continue
        call = PNEUMONIA if any(p["decision"] == PNEUMONIA for p in found) else NORMAL
        newest = found[-1]
        device = newest.get("device") or "not DICOM"
        reviewed[key] = Pair(call, r["reader_label"], newest.get("model_sha256") or "unknown", device)
    out.pairs = list(reviewed.values())
    return out


def summary(pairs: list[Pair]) -> dict[str, Any]:
    """Counts, rates with Wilson 95% intervals, and Cohen's kappa of ``pairs``, the read as the reference."""
    tp = sum(p.model_call == PNEUMONIA and p.reader == PNEUMONIA for p in pairs)
    fn = sum(p.model_call == NORMAL and p.reader == PNEUMONIA for p in pairs)
    tn = sum(p.model_call == NORMAL and p.reader == NORMAL for p in pairs)
    fp = sum(p.model_call == PNEUMONIA and p.reader == NORMAL for p in pairs)
    return {
        "n": len(pairs),
        "reads_pneumonia": tp + fn,
        "confusion": [[tn, fp], [fn, tp]],
        "sensitivity": wilson(tp, tp + fn),
        "specificity": wilson(tn, tn + fp),
        "ppv": wilson(tp, tp + fp),
        "npv": wilson(tn, tn + fn),
        "agreement": wilson(tp + tn, len(pairs)),
        "kappa": _kappa(tn, fp, fn, tp),
    }


def wilson(k: int, n: int) -> dict[str, Any] | None:
    """``k`` of ``n`` as a rate with its Wilson score 95% interval; None when ``n`` is 0."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"k": k, "n": n, "rate": k / n, "low": float(ci.low), "high": float(ci.high)}


def _kappa(tn: int, fp: int, fn: int, tp: int) -> float | None:
    """Cohen's kappa (scikit-learn's); None when it is undefined (every call and read the same class)."""
    import math
    import warnings

    from sklearn.metrics import cohen_kappa_score

    calls = [0] * (tn + fn) + [1] * (fp + tp)  # in the order tn, fn, fp, tp
    reads = [0] * tn + [1] * fn + [0] * fp + [1] * tp
    with warnings.catch_warnings():  # 0/0 when there is one class only: undefined, said as None
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(reads, calls)) if calls else math.nan
    return None if math.isnan(kappa) else kappa


def _rate(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    return f"{100 * cell['rate']:.1f}% [{100 * cell['low']:.1f}, {100 * cell['high']:.1f}] ({cell['k']}/{cell['n']})"
