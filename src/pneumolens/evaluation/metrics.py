"""Binary metrics with PNEUMONIA as the positive class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, roc_auc_score


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None  # undefined (e.g. no positives) -> None, valid JSON


def binary_metrics(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of thresholded probabilities; a probability >= ``threshold`` is called PNEUMONIA.

    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]``. Ratios whose denominator is zero are None.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"y_true and prob differ in shape: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("no samples to score")
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "false_positive_rate": _ratio(fp, tn + fp),
        "precision": precision,
        "negative_predictive_value": _ratio(tn, tn + fn),
        "f1": f1,
        "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def resample_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | None]:
    """``binary_metrics``' ratios and ROC-AUC for one bootstrap resample, in numpy: the same numbers
    (``tests/test_metrics.py`` holds them to scikit-learn's on random resamples with tied scores),
    for the thousands of resamples behind every interval, where scikit-learn's checks of its inputs
    took nearly all of ``evaluate``'s time. ROC-AUC is the Mann-Whitney statistic (ties count half),
    which is the area under the ROC curve ``roc_auc_score`` computes."""
    called, positive = p >= threshold, y == 1
    n, n_pos = y.size, int(np.count_nonzero(positive))
    tp = int(np.count_nonzero(called & positive))
    fp = int(np.count_nonzero(called)) - tp
    fn, tn = n_pos - tp, n - n_pos - fp
    auc = None
    if 0 < n_pos < n:
        ranks = rankdata(p)  # average ranks for ties
        auc = float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)))
    return {
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "false_positive_rate": _ratio(fp, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": auc,
    }


def net_benefit(y_true: Sequence[int], prob: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Decision-curve net benefit (Vickers and Elkin, 2006) of calling PNEUMONIA at each threshold
    probability pt: TP/n - FP/n * pt / (1 - pt), the true positives per film less the false positives
    weighted by the odds at which a clinician would act. "Treat all" is the same with every film
    called; "treat none" is 0. Thresholds must lie in (0, 1)."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    pt = np.asarray(thresholds, dtype=float)
    if y.size == 0 or y.shape != p.shape:
        raise ValueError(f"y_true and prob must be non-empty and alike in shape: {y.shape} vs {p.shape}")
    if ((pt <= 0) | (pt >= 1)).any():
        raise ValueError("decision-curve thresholds must lie strictly between 0 and 1")
    called = p[None, :] >= pt[:, None]  # (T, n)
    tp = (called & (y[None, :] == 1)).sum(axis=1)
    fp = (called & (y[None, :] == 0)).sum(axis=1)
    return tp / y.size - fp / y.size * pt / (1 - pt)
