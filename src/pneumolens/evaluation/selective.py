"""Which calls is the model least sure of? Risk against coverage, and the ``borderline`` band.

A call near the operating point rests on little: the shipped model's validation errors crowd there
(26 errors on 746 films; 7 left among the 90% of films farthest from the threshold). Distance is
measured in logits, ``|logit(p) - logit(threshold)|``, so that it means the same on either side.

- :func:`risk_coverage`: if the films nearest the threshold went to a reader without the model's
  call, how right would the calls on the rest be? One row per coverage (the share of films kept).
- :func:`borderline_band`: the band of probabilities around the threshold that holds a given share
  of the validation films (10% by default), chosen at training (``pneumolens train``, ``ensemble``)
  or on a site's films (``calibrate``) and stored in the model file as ``borderline``; a result in
  it carries the caution ``borderline`` (``pneumolens.lungs.flags``).
- :func:`band_for_risk`: the band set by what the calls outside it may get wrong instead
  (``--borderline-risk`` of ``train``, ``ensemble`` and ``calibrate``): the fewest films nearest the
  threshold left inside so that the calls on the rest of the labelled films are wrong at most a
  given share of the time (or, with a confidence, ``--borderline-confidence`` of ``train`` and
  ``ensemble`` and ``--confidence`` of ``calibrate``, by the Clopper-Pearson upper bound of that
  share). It holds on films like those it was set on, not
  under a shift: the check is ``evaluate``'s ``selective`` rows on other films.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumolens.evaluation.calibration import lower_bound
from pneumolens.lungs.flags import BORDERLINE_FLAG

log = logging.getLogger(__name__)

BORDERLINE_SHARE = 0.10  # of the validation films: the band that holds the model's least sure calls
COVERAGES = (1.0, 0.95, 0.9, 0.8)


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def distance(p: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """How far each probability lies from ``threshold``, in logits."""
    return np.abs(_logit(np.asarray(p, dtype=float)) - _logit(threshold))


def borderline_band(p: Sequence[float] | np.ndarray, threshold: float, share: float = BORDERLINE_SHARE) -> dict:
    """The probabilities ``(low, high)`` around ``threshold``, equally far from it in logits, that hold
    ``share`` of the films scored ``p`` (those nearest the threshold)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    d = distance(p, threshold)
    if not len(d):
        raise ValueError("no films to set a borderline band on")
    reach = float(np.quantile(d, share))
    z = float(_logit(threshold))
    low, high = 1 / (1 + np.exp(-(z - reach))), 1 / (1 + np.exp(-(z + reach)))
    return {"low": float(low), "high": float(high), "logit_distance": reach, "share": share, "n": len(d)}


def band_for_risk(
    y: Sequence[int], p: Sequence[float] | np.ndarray, threshold: float, risk: float, confidence: float | None = None
) -> dict:
    """The narrowest band around ``threshold``, equally far from it in logits, outside which the calls
    on the films ``y``, ``p`` are wrong at most ``risk`` of the time (with ``confidence``: the
    Clopper-Pearson upper bound of that error rate at this confidence is at most ``risk``).

    Raises:
        ValueError: ``risk`` or ``confidence`` outside (0, 1), no films, or no band that meets ``risk``
            while keeping a film outside it (the message gives the lowest rate these films allow).
    """
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y_, p_ = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if not len(y_):
        raise ValueError("no films to set a borderline band on")
    d = distance(p_, threshold)
    order = np.argsort(d, kind="stable")  # nearest the threshold first
    d, wrong = d[order], ((p_ >= threshold).astype(int) != y_)[order]
    n = len(d)
    inside = np.arange(n)  # k films inside the band: the k nearest; the n - k others kept
    kept = n - inside
    errors = np.cumsum(wrong[::-1])[::-1]  # errors among the films from the k-th nearest on
    rate = errors / kept
    bound = rate if confidence is None else 1 - lower_bound(kept - errors, kept, confidence)
    # a band can part the k-th and the (k+1)-th nearest only where their distances differ
    parts = np.r_[True, d[1:] > d[:-1]]
    meets = np.flatnonzero((bound <= risk) & parts)
    if not len(meets):
        best = float(bound[parts].min())
        raise ValueError(
            f"no borderline band keeps the calls outside it wrong at most {risk:.1%} of the time on these {n} films"
            + (f" with {confidence:.0%} confidence" if confidence else "")
            + f" (the lowest they allow: {best:.1%})"
        )
    k = int(meets[0])
    reach = 0.0 if k == 0 else float((d[k - 1] + d[k]) / 2)
    z = float(_logit(threshold))
    low, high = (threshold, threshold) if k == 0 else (1 / (1 + np.exp(-(z - reach))), 1 / (1 + np.exp(-(z + reach))))
    return {
        "low": float(low),
        "high": float(high),
        "logit_distance": reach,
        "share": k / n,
        "n": n,
        "risk": risk,
        "confidence": confidence,
        "error_rate_outside": float(rate[k]),
    }


def band_by_rule(
    y: Sequence[int],
    p: Sequence[float] | np.ndarray,
    threshold: float,
    share: float | None,
    risk: float | None,
    confidence: float | None = None,
) -> dict:
    """The band for ``risk`` when given (:func:`band_for_risk`, which may refuse), else the one
    holding ``share`` (a tenth when None)."""
    if risk is None:
        return borderline_band(p, threshold, BORDERLINE_SHARE if share is None else share)
    return band_for_risk(y, p, threshold, risk, confidence)


def validation_band(
    y: Sequence[int],
    p: Sequence[float] | np.ndarray,
    threshold: float,
    share: float,
    risk: float | None,
    confidence: float | None = None,
) -> dict:
    """The band a newly trained model records on its validation films: for ``risk`` when given
    (:func:`band_for_risk`, at ``confidence`` when given), else holding ``share``. A risk these films
    cannot meet falls back to the share, with a warning and the risk recorded as ``risk_not_met``
    (and its confidence as ``confidence_not_met``): the model is not lost for it."""
    try:
        return band_by_rule(y, p, threshold, share, risk, confidence)
    except ValueError as e:
        log.warning("%s; the borderline band holds %.0f%% of the validation films instead", e, 100 * share)
        unmet = {"risk_not_met": risk} | ({} if confidence is None else {"confidence_not_met": confidence})
        return {**borderline_band(p, threshold, share), **unmet}


def in_band(p: float, band: dict[str, Any] | None) -> bool:
    """Whether ``p`` lies inside ``band`` (the open interval; False without a band)."""
    return band is not None and band["low"] < p < band["high"]


def borderline_flags(p: float, band: dict[str, Any] | None) -> list[str]:
    """The caution a probability ``p`` carries: ``borderline`` inside a model's ``band``
    (``LoadedModel.borderline``), nothing outside it or without one."""
    return [BORDERLINE_FLAG] if in_band(p, band) else []


def risk_coverage(
    y: Sequence[int], p: Sequence[float], threshold: float, coverages: Sequence[float] = COVERAGES
) -> list[dict[str, Any]]:
    """For each coverage c: keep the share c of films farthest from ``threshold`` and score the calls
    on them (accuracy, sensitivity, specificity, errors kept); the rest go to a reader."""
    y_, p_ = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    order = np.argsort(-distance(p_, threshold), kind="stable")
    called = (p_ >= threshold).astype(int)
    rows = []
    for c in coverages:
        keep = order[: int(round(c * len(y_)))]
        yy, cc = y_[keep], called[keep]
        pos, neg = yy == 1, yy == 0
        rows.append(
            {
                "coverage": float(c),
                "kept": len(keep),
                "accuracy": float(np.mean(cc == yy)) if len(keep) else None,
                "sensitivity": float(np.mean(cc[pos] == 1)) if pos.any() else None,
                "specificity": float(np.mean(cc[neg] == 0)) if neg.any() else None,
                "errors": int(np.sum(cc != yy)),
                "deferred_errors": int(np.sum(called != y_)) - int(np.sum(cc != yy)),
            }
        )
    return rows


def borderline_metrics(
    y: Sequence[int], p: Sequence[float], threshold: float, band: dict[str, Any] | None
) -> dict[str, Any] | None:
    """How the films in ``band`` fare against the rest: films, errors, accuracy in each (None without
    a band)."""
    if band is None:
        return None
    y_, p_ = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    inside = np.array([in_band(v, band) for v in p_], dtype=bool)
    wrong = (p_ >= threshold).astype(int) != y_
    out: dict[str, Any] = {"band": [band["low"], band["high"]]}
    for name, part in (("borderline", inside), ("others", ~inside)):
        n = int(part.sum())
        out[name] = {"n": n, "errors": int(wrong[part].sum()), "accuracy": float(1 - wrong[part].mean()) if n else None}
    return out
