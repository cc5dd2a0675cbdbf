"""Site recalibration: refit a model's temperature and operating point on a site's own labelled films.

A model's threshold is chosen on the validation split of the hospital it was trained at. Elsewhere
(another population, other machines) its scores shift and the same threshold gives another
sensitivity. ``recalibrate`` keeps the network's features and refits only the two numbers that turn
its score into a decision: a temperature (folded into the last layer, as training does) and the
threshold for a stated policy. The new model file records where its operating point came from:
class counts, policy, date and the parent model's weights hash, never a file name.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pneumolens.checkpoint import LoadedModel
from pneumolens.config import CLASS_NAMES, check_band_rule
from pneumolens.data.sources import check_headers, find_split
from pneumolens.evaluation.calibration import choose_threshold, fit_temperature, fold_temperature, parse_policy
from pneumolens.evaluation.evaluate import scored_metrics
from pneumolens.evaluation.selective import band_by_rule
from pneumolens.inference import default_workers, predict_samples

DEFAULT_POLICY = "sensitivity:0.97"
SUFFIX = "-recalibrated"
MIN_PER_CLASS = 30  # below this, a threshold for 97% sensitivity rests on one or two films


@dataclass
class Recalibration:
    model: nn.Module  # the parent's network, with the new temperature folded in
    meta: dict[str, Any]  # the parent's metadata with the new operating point
    report: dict[str, Any]  # what changed, and the site metrics at the old and the new threshold
    skipped: list[tuple[str, str]]  # (path, reason) for films that could not be read


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def refit(
    y: np.ndarray, z: np.ndarray, policy: str, temperature: bool = True, confidence: float | None = None
) -> tuple[float, float]:
    """(temperature, threshold) for labels ``y`` and the model's logits ``z`` on a site's films."""
    t = fit_temperature(y, z) if temperature else 1.0
    return t, choose_threshold(y, _sigmoid(z / t), policy, confidence)


def recalibrate(
    loaded: LoadedModel,
    data: str | os.PathLike[str],
    policy: str | None = None,
    temperature: bool = True,
    min_per_class: int = MIN_PER_CLASS,
    confidence: float | None = None,
    n_boot: int = 1000,
    borderline_share: float | None = None,
    borderline_risk: float | None = None,
) -> Recalibration:
    """Refit ``loaded``'s operating point on ``data`` (class folders or a CSV manifest of one site).

    ``policy`` defaults to the one the model was calibrated with (e.g. ``sensitivity:0.97``). With
    ``confidence``, the policy's rate must hold at that confidence (see
    :func:`~pneumolens.evaluation.calibration.choose_threshold`), not only on these films. The
    ``borderline`` band is set again around the new threshold on these films: holding
    ``borderline_share`` of them, or with ``borderline_risk`` the narrowest band outside which the
    calls on them are wrong at most that share of the time (with ``confidence``, by its upper bound;
    :func:`~pneumolens.evaluation.selective.band_for_risk`). Given neither, the model's own band
    rule is kept (its risk, at its own confidence unless ``confidence`` is given, or its share; 10%
    for a model without a band).

    Raises:
        ValueError: an unknown policy, fewer than ``min_per_class`` readable films of a class, or
            too few for ``confidence`` (the message gives the counts).
    """
    policy = policy or loaded.meta.get("calibration", {}).get("threshold_policy") or DEFAULT_POLICY
    check_band_rule(borderline_share, borderline_risk)
    own = loaded.borderline or {}
    band_confidence = confidence
    if borderline_share is None and borderline_risk is None:  # the model's own rule
        borderline_risk = own.get("risk")
        band_confidence = own.get("confidence") if confidence is None else confidence
        borderline_share = None if borderline_risk is not None else own.get("share")  # None: a tenth
    if parse_policy(policy)[0] == "fixed":
        raise ValueError(f"policy {policy!r} fixes the threshold; recalibration needs a target to meet")
    samples, bad = check_headers(find_split(data, "calibration"))
    logits, errors = predict_samples(
        loaded.model, samples, loaded.preprocess, num_workers=default_workers(len(samples)), logits=True
    )
    skipped = bad + sorted(errors.items())
    scored = [s for s in samples if s.path in logits]
    y = np.array([s.label for s in scored], dtype=int)
    z = np.array([logits[s.path] for s in scored], dtype=float)
    counts = {name: int((y == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    short = [f"{n} {name}" for name, n in counts.items() if n < min_per_class]
    if short:
        raise ValueError(
            f"{data}: {' and '.join(short)} readable film(s) ({len(skipped)} unreadable); recalibration needs"
            f" at least {min_per_class} of each class (--min-per-class)"
        )

    try:
        t, threshold = refit(y, z, policy, temperature, confidence)
    except ValueError as e:
        raise ValueError(f"{data}: {e}") from None
    model = copy.deepcopy(loaded.model)
    if temperature:
        fold_temperature(model, t)
    patients = [s.patient for s in scored]
    before = scored_metrics(y, _sigmoid(z), loaded.threshold, patients, n_boot)
    p = _sigmoid(z / t)  # the site's films as the recalibrated model scores them
    after = scored_metrics(y, p, threshold, patients, n_boot)
    try:  # around the new threshold, on the site's films
        band = band_by_rule(y, p, threshold, borderline_share, borderline_risk, band_confidence)
    except ValueError as e:  # a risk these films cannot meet
        raise ValueError(f"{data}: {e} (--borderline-risk)") from None
    record = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "unreadable": len(skipped),
        "policy": policy,
        "confidence": confidence,
        "temperature": t,  # relative to the parent's (already folded) temperature
        "threshold_before": loaded.threshold,
        "threshold": threshold,
        "parent": {"name": loaded.meta.get("name"), "sha256": loaded.sha256},
        "site_metrics": {k: after[k] for k in ("n", "sensitivity", "specificity", "roc_auc", "ece")},
        "borderline": band,
    }
    meta = copy.deepcopy(loaded.meta)
    meta["threshold"] = threshold
    meta["borderline"] = band
    name = str(meta.get("name", "model"))
    meta["name"] = name if name.endswith(SUFFIX) else name + SUFFIX  # the audit trail and the API show it
    meta["site_calibrations"] = [*meta.get("site_calibrations", []), record]
    report = {**record, "before": before, "after": after}
    return Recalibration(model, meta, report, skipped)


def format_report(r: dict[str, Any]) -> str:
    """Old and new operating point side by side, with 95% bootstrap intervals."""
    b, a = r["before"], r["after"]

    def cell(m: dict[str, Any], key: str) -> str:
        v, ci = m[key], m["ci"].get(key)
        return "n/a" if v is None else f"{100 * v:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    counts = ", ".join(f"{n} {name}" for name, n in r["counts"].items())
    rows = [
        ("", "model's threshold", "refitted"),
        ("threshold", f"{r['threshold_before']:.3f}", f"{r['threshold']:.3f}"),
        ("sensitivity", cell(b, "sensitivity"), cell(a, "sensitivity")),
        ("specificity", cell(b, "specificity"), cell(a, "specificity")),
        ("accuracy", cell(b, "accuracy"), cell(a, "accuracy")),
        ("ECE", f"{b['ece']:.3f}", f"{a['ece']:.3f}"),
    ]
    w0, w1 = max(len(x[0]) for x in rows), max(len(x[1]) for x in rows)
    sure = f" with {r['confidence']:g} confidence" if r.get("confidence") else ""
    lines = [f"site films: {counts}; policy {r['policy']}{sure}; temperature x{r['temperature']:.3f}"]
    lines += [f"{x:<{w0}}  {y:<{w1}}  {z}" for x, y, z in rows]
    if band := r.get("borderline"):
        why = f"; the calls outside it wrong {band['error_rate_outside']:.1%} of the time" if "risk" in band else ""
        lines.append(
            f"borderline band: {band['low']:.3f} to {band['high']:.3f}, holding {band['share']:.1%} of these films{why}"
        )
    lines.append(
        f"ROC-AUC on these films: {a['roc_auc']:.4f} (unchanged by recalibration). Figures measured on the films "
        "the threshold was fitted on are optimistic: evaluate the new model on other films of the site."
    )
    return "\n".join(lines)
