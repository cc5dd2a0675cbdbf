"""What a call is worth where pneumonia is rarer (or commoner) than on the films scored.

The Kaggle test split holds 62.5% pneumonia films; a clinic's share is often a fraction of that. A
call's positive and negative predictive values (PPV, NPV) depend on that share, the prevalence,
while sensitivity and specificity do not (Altman and Bland 1994): with sensitivity ``se`` and
specificity ``sp``, at prevalence ``q``

    PPV = se q / (se q + (1 - sp)(1 - q))        NPV = sp (1 - q) / (sp (1 - q) + (1 - se) q)

Their 95% intervals come from the same patient bootstrap as ``evaluate``'s other intervals: each
resample's sensitivity and specificity put through the same formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumolens.evaluation.calibration import draw_groups, patient_groups
from pneumolens.evaluation.metrics import resample_metrics


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float | None, float | None]:
    """(PPV, NPV) at ``prevalence`` from a sensitivity and specificity (None where undefined: no
    call of that kind is ever made)."""
    called_pos = sensitivity * prevalence + (1 - specificity) * (1 - prevalence)
    called_neg = specificity * (1 - prevalence) + (1 - sensitivity) * prevalence
    ppv = sensitivity * prevalence / called_pos if called_pos > 0 else None
    npv = specificity * (1 - prevalence) / called_neg if called_neg > 0 else None
    return ppv, npv


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) as ``evaluate`` computes them (None for a class with no films)."""
    m = resample_metrics(y, p, threshold)
    return m["sensitivity"], m["specificity"]


def at_prevalences(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    prevalences: Sequence[float],
    patients: Sequence[str],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each prevalence in (0, 1): the PPV and NPV the calls at ``threshold`` would have there,
    from the films' sensitivity and specificity, with percentile intervals over ``n_boot`` resamples of
    whole patients. Needs films of both classes.

    Raises:
        ValueError: a prevalence outside (0, 1), or films of one class only.
    """
    for q in prevalences:
        if not 0 < q < 1:
            raise ValueError(f"prevalence {q}: a share of films with pneumonia lies between 0 and 1")
    y_, p_ = np.asarray(y, int), np.asarray(p, float)
    se, sp = _rates(y_, p_, threshold)
    if se is None or sp is None:
        raise ValueError("predictive values at another prevalence need films of both classes")
    members, rng = patient_groups(patients), np.random.default_rng(seed)
    draws = []  # (sensitivity, specificity) of each resample holding both classes
    for _ in range(n_boot):
        i = draw_groups(members, rng)
        r_se, r_sp = _rates(y_[i], p_[i], threshold)
        if r_se is not None and r_sp is not None:
            draws.append((r_se, r_sp))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = []
    for q in prevalences:
        ppv, npv = predictive_values(se, sp, q)
        resampled = np.array([predictive_values(a, b, q) for a, b in draws], dtype=float).reshape(-1, 2)  # None: nan
        ci = {}
        for k, col in (("ppv", 0), ("npv", 1)):
            v = resampled[:, col][~np.isnan(resampled[:, col])]
            ci[k] = [float(np.quantile(v, lo)), float(np.quantile(v, hi))] if v.size else None
        out.append({"prevalence": float(q), "ppv": ppv, "npv": npv, "ci": ci})
    return out
