"""Has what the model sees, or what it says, changed? Two windows of the audit trail compared.

A deployed model meets no labels, but its trail holds every call: the share of inputs refused, of
inputs out of the model's scope by their header (a lateral view: a routing change), of films called
pneumonia, of films flagged for a check (each flag on its own, and any of them), of
films with the ``grey_lungs`` caution, of inputs from each DICOM device (a new detector, or one
gone quiet), the distribution of the probability, and the film's measures behind the flags (the
lungs' share of the image and median grey, noise, detail), which move before a flag's bound is
crossed. ``compare`` puts a recent window beside a baseline (the site's own
earlier weeks) and tests each: Fisher's exact test for a share, the two-sample Kolmogorov-Smirnov
test for the probabilities and each measure, Bonferroni-corrected over the tests made, so that a
drift alert at ``alpha`` 0.01 is rare when nothing changed.

An alert says the inputs or the calls have moved, not why: a new detector or protocol, another
patient mix (a winter's pneumonia season raises the call rate on its own), a broken export, or a
model that no longer fits the site. Someone has to look; ``pneumolens calibrate`` on labelled films
of the new period says whether the operating point still holds. Only aggregates are read and
shown: the trail holds no patient identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from pneumolens.data.images import OUT_OF_SCOPE
from pneumolens.lungs.flags import MEASURES, MESSAGES, check_flags

if TYPE_CHECKING:
    from pneumolens.monitoring.audit import AuditLog

CALLED, NOT_CALLED = "PNEUMONIA", "NORMAL"
MIN_PREDICTIONS = 30  # fewer in a window and no comparison is made: the tests could find nothing
REFUSED, PNEUMONIA, CHECK, PROBABILITY = "refused", "called pneumonia", "any check flag", "probability"
# OUT_OF_SCOPE: refused rows whose error starts so are films the model is not for (a lateral view)


@dataclass
class Window:
    """What one stretch of the trail holds: predictions (films read), refusals, films out of the
    model's scope by their header (a lateral view, another body part: a routing change shows there,
    apart from broken files), and per film its probability, call and flags. The trail's own rows
    (prunes, rebuilds) are not counted."""

    refused: int = 0
    out_of_scope: int = 0
    probabilities: list[float] = field(default_factory=list)
    called: int = 0
    flags: dict[str, int] = field(default_factory=dict)  # films carrying each flag
    checked: int = 0  # films with at least one flag other than the grey_lungs caution
    measures: dict[str, list[float]] = field(default_factory=dict)  # lung_median, noise, ... (rows that have them)
    devices: dict[str, int] = field(default_factory=dict)  # inputs (read or refused) from each DICOM device
    models: set[str] = field(default_factory=set)  # weight hashes
    thresholds: set[float] = field(default_factory=set)
    start: str | None = None
    end: str | None = None

    @property
    def predictions(self) -> int:
        return len(self.probabilities)

    @property
    def inputs(self) -> int:
        return self.predictions + self.refused + self.out_of_scope


def window(rows: Iterable[Mapping[str, Any]]) -> Window:
    """Summarise audit rows (``AuditLog.rows``) into a ``Window``."""
    w = Window()
    for r in rows:
        decision = r.get("decision")
        if decision not in (CALLED, NOT_CALLED, REFUSED):
            continue  # the trail's own notes
        w.start = w.start or r["time"]
        w.end = r["time"]
        if r.get("device"):
            w.devices[r["device"]] = w.devices.get(r["device"], 0) + 1
        if decision == REFUSED:
            if (r.get("error") or "").startswith(f"{OUT_OF_SCOPE}:"):
                w.out_of_scope += 1
            else:
                w.refused += 1
            continue
        w.probabilities.append(float(r["probability"]))
        w.called += decision == CALLED
        flags = set(json.loads(r.get("flags") or "[]"))
        for f in flags:
            w.flags[f] = w.flags.get(f, 0) + 1
        w.checked += bool(check_flags(flags))
        for name, value in json.loads(r.get("measures") or "{}").items():
            if value is not None:
                w.measures.setdefault(name, []).append(float(value))
        if r.get("model_sha256"):
            w.models.add(r["model_sha256"])
        if r.get("threshold") is not None:
            w.thresholds.add(round(float(r["threshold"]), 6))
    return w


@dataclass
class Comparison:
    """One measure of the two windows side by side, and its test."""

    name: str
    baseline: str  # the value in words, e.g. "24.0% (12 of 50)"
    recent: str
    p: float  # raw p-value
    p_adjusted: float = 1.0
    alert: bool = False


@dataclass
class DriftReport:
    baseline: Window
    recent: Window
    tests: list[Comparison]
    alpha: float
    notes: list[str]

    @property
    def drift(self) -> bool:
        return any(t.alert for t in self.tests)

    def as_dict(self) -> dict[str, Any]:
        """For JSON: both windows' counts, each measure, the notes and the verdict."""

        def counts(w: Window) -> dict[str, Any]:
            return {
                "films_read": w.predictions,
                "refused": w.refused,
                "out_of_scope": w.out_of_scope,
                "start": w.start,
                "end": w.end,
            }

        return {
            "baseline": counts(self.baseline),
            "recent": counts(self.recent),
            "tests": [asdict(t) for t in self.tests],
            "alpha": self.alpha,
            "drift": self.drift,
            "notes": self.notes,
        }

    def __str__(self) -> str:
        b, r = self.baseline, self.recent
        lines = [
            f"baseline: {b.predictions} films read, {b.refused} refused, {b.out_of_scope} out of scope{_span(b)}",
            f"recent:   {r.predictions} films read, {r.refused} refused, {r.out_of_scope} out of scope{_span(r)}",
            "",
            f"{'measure':<26} {'baseline':<22} {'recent':<22} {'p (Bonferroni)':<15} drift",
        ]
        for t in self.tests:
            lines.append(
                f"{t.name:<26} {t.baseline:<22} {t.recent:<22} {_p(t.p_adjusted):<15} {'DRIFT' if t.alert else '-'}"
            )
        lines.append("")
        lines += self.notes
        verdict = (
            f"DRIFT at alpha {self.alpha}: the inputs or the calls have changed; find out why before trusting the "
            "operating point (a new device or protocol, another patient mix, a broken export)"
            if self.drift
            else f"no drift found at alpha {self.alpha}"
        )
        return "\n".join([*lines, verdict])


def _span(w: Window) -> str:
    return f" ({w.start} to {w.end})" if w.start else ""


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _share(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}% ({k} of {n})" if n else "-"


def _fisher(name: str, k1: int, n1: int, k2: int, n2: int) -> Comparison:
    p = float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue) if n1 and n2 else 1.0
    return Comparison(name, _share(k1, n1), _share(k2, n2), p)


def _ks(name: str, a: list[float], b: list[float]) -> Comparison:
    p = float(stats.ks_2samp(a, b).pvalue)
    return Comparison(name, f"median {np.median(a):.3g}", f"median {np.median(b):.3g}", p)


class TooFewFilms(ValueError):
    """A window holds fewer than ``MIN_PREDICTIONS`` films read: nothing to compare yet."""


def compare(baseline: Window, recent: Window, alpha: float = 0.01) -> DriftReport:
    """Test each measure of ``recent`` against ``baseline``; raise ``TooFewFilms`` when either window has
    fewer than ``MIN_PREDICTIONS`` films read."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    for name, w in (("baseline", baseline), ("recent", recent)):
        if w.predictions < MIN_PREDICTIONS:
            raise TooFewFilms(
                f"the {name} window holds {w.predictions} films read; at least {MIN_PREDICTIONS} are needed to compare"
            )
    nb, nr = baseline.predictions, recent.predictions
    tests = [
        _fisher(REFUSED, baseline.refused, baseline.inputs, recent.refused, recent.inputs),
        _fisher(OUT_OF_SCOPE, baseline.out_of_scope, baseline.inputs, recent.out_of_scope, recent.inputs),
        _fisher(PNEUMONIA, baseline.called, nb, recent.called, nr),
    ]
    tests.append(_ks(PROBABILITY, baseline.probabilities, recent.probabilities))
    for name in MEASURES:
        vb, vr = baseline.measures.get(name, []), recent.measures.get(name, [])
        if min(len(vb), len(vr)) >= MIN_PREDICTIONS:  # a trail from before the measures were kept has none
            tests.append(_ks(name, vb, vr))
    tests.append(_fisher(CHECK, baseline.checked, nb, recent.checked, nr))
    for flag in [f for f in MESSAGES if f in baseline.flags or f in recent.flags]:
        tests.append(_fisher(f"flag {flag}", baseline.flags.get(flag, 0), nb, recent.flags.get(flag, 0), nr))
    for device in sorted(set(baseline.devices) | set(recent.devices)):  # a new or silent detector
        kb, kr = baseline.devices.get(device, 0), recent.devices.get(device, 0)
        tests.append(_fisher(f"device {device}", kb, baseline.inputs, kr, recent.inputs))
    for t in tests:
        t.p_adjusted = min(1.0, t.p * len(tests))
        t.alert = t.p_adjusted < alpha
    notes = []
    if baseline.models != recent.models:
        notes.append(
            "the model changed between the windows (weights "
            f"{', '.join(sorted(m[:12] for m in baseline.models))} before, "
            f"{', '.join(sorted(m[:12] for m in recent.models))} after): a drift may be the new model's"
        )
    if baseline.thresholds != recent.thresholds:
        notes.append(
            f"the operating point changed between the windows ({sorted(baseline.thresholds)} before, "
            f"{sorted(recent.thresholds)} after): the call rate moves with it"
        )
    return DriftReport(baseline, recent, tests, alpha, notes)


def drift_in(
    audit: AuditLog,
    recent_since: datetime,
    since: datetime | None = None,
    alpha: float = 0.01,
    device: str | None = None,
) -> DriftReport:
    """Compare the rows of ``audit`` dated from ``recent_since`` on with those before it (from ``since``
    on); with ``device``, only the inputs from that DICOM device (its make and model, as the trail
    keeps them)."""
    if since is not None and since >= recent_since:
        raise ValueError("the baseline's start (since) must come before the recent window's start")
    before, after = audit.rows(since, before=recent_since), audit.rows(recent_since)
    if device is not None:
        before, after = ([r for r in rows if r.get("device") == device] for rows in (before, after))
    return compare(window(before), window(after), alpha)
