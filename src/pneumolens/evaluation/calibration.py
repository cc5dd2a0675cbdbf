"""Operating point, calibration and confidence intervals.

Training fits the first two on the patient-held-out validation split (never on test) and stores
them in the model file; ``calibrate`` refits them on a site's own films; ``evaluate`` reports
bootstrap intervals for every metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import beta
from sklearn.metrics import roc_curve

from pneumolens.evaluation.metrics import resample_metrics


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``fixed:0.5``, ``sensitivity:0.97``, ``specificity:0.9`` or ``youden``."""
    name, _, value = policy.partition(":")
    if name == "youden" and not value:
        return name, None
    if name in ("fixed", "sensitivity", "specificity") and value:
        v = float(value)
        if 0.0 <= v <= 1.0:
            return name, v
    raise ValueError(f"unknown threshold policy {policy!r}; valid: fixed:T, sensitivity:S, specificity:S, youden")


def lower_bound(k: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound of a proportion, k successes of n."""
    k = np.asarray(k, float)
    return np.where(k > 0, beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1), 0.0)


def choose_threshold(y: Sequence[int], p: Sequence[float], policy: str, confidence: float | None = None) -> float:
    """The decision threshold that meets ``policy`` on (validation) labels ``y`` and probabilities ``p``.

    ``sensitivity:S``: the highest threshold whose sensitivity is at least S (so the best
    specificity that keeps S). ``specificity:S``: the lowest threshold whose specificity is at least
    S. ``youden``: maximises sensitivity + specificity - 1. With ``confidence`` (e.g. 0.95), the
    sensitivity or specificity must be at least S with that confidence (its one-sided
    Clopper-Pearson lower bound), not only as measured: a margin for films not yet seen.

    Raises:
        ValueError: one class missing, or too few films of the class for ``confidence``.
    """
    name, value = parse_policy(policy)
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if confidence is not None and name not in ("sensitivity", "specificity"):
        raise ValueError(f"a confidence applies to a sensitivity:S or specificity:S policy, not {policy!r}")
    if name == "fixed":
        return float(value)
    y, p = np.asarray(y, int), np.asarray(p, float)
    if not 0 < y.sum() < y.size:
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if confidence is not None:
        n = n_pos if name == "sensitivity" else n_neg
        rate = lower_bound(np.rint(tpr * n_pos) if name == "sensitivity" else np.rint((1 - fpr) * n_neg), n, confidence)
        if not (rate >= value).any():
            label = "positive" if name == "sensitivity" else "negative"
            need = (
                f"at least {math.ceil(math.log(1 - confidence) / math.log(value))}, every one of them called right"
                if value < 1
                else "infinitely many"
            )
            raise ValueError(
                f"{n} {label} film(s) cannot show {name} >= {value:g} with {confidence:g} confidence; that needs {need}"
            )
    else:
        rate = tpr if name == "sensitivity" else 1 - fpr
    if name == "sensitivity":
        ok = np.flatnonzero(rate >= value)
        return float(thr[ok[0]])  # thresholds decrease along the curve: the first is the highest
    if name == "specificity":
        ok = np.flatnonzero(rate >= value)
        return float(thr[ok[-1]])
    return float(thr[np.argmax(tpr - fpr)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_temperature(y: Sequence[int], logits: Sequence[float]) -> float:
    """Temperature T minimising the negative log-likelihood of sigmoid(logit / T) (Guo et al., 2017)."""
    y, z = np.asarray(y, float), np.asarray(logits, float)

    def nll(log_t: float) -> float:
        q = np.clip(_sigmoid(z / math.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def fold_temperature(model: torch.nn.Module, temperature: float) -> str:
    """Divide the final single-logit layer by ``temperature`` (exact: the logit is linear in it).

    The model file then gives calibrated probabilities to every caller with no extra step. An
    ensemble (mean logit) gets it folded into every member: mean(z_i / T) = mean(z_i) / T.
    """
    if isinstance(members := getattr(model, "members", None), torch.nn.ModuleList):
        names = {fold_temperature(m, temperature) for m in members}
        return "members.*." + "|".join(sorted(names))
    name, last = next((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, torch.nn.Linear))
    if last.out_features != 1:
        raise ValueError(f"cannot fold a temperature into {name} with {last.out_features} outputs")
    with torch.no_grad():
        last.weight /= temperature
        last.bias /= temperature
    return name


def unfold_temperature(model: torch.nn.Module, calibration: dict[str, Any]) -> None:
    """Undo :func:`fold_temperature` as a model file's ``calibration`` records it (a no-op if nothing
    was folded): ``model`` gives its raw logits again, as it was trained."""
    if not (name := calibration.get("folded_into")):
        return
    if name.startswith("members."):
        raise ValueError("an ensemble's temperature is folded into every member; unfold the members")
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.weight *= calibration["temperature"]
        layer.bias *= calibration["temperature"]


def expected_calibration_error(y: Sequence[int], p: Sequence[float], bins: int = 15) -> float:
    """ECE: the bin-weighted gap between mean confidence and accuracy of the predicted class."""
    y, p = np.asarray(y, int), np.asarray(p, float)
    pred = (p >= 0.5).astype(int)
    conf = np.where(pred == 1, p, 1 - p)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def patient_groups(groups: Sequence[str]) -> list[np.ndarray]:
    """The indices of each group's films (one array per group, groups in sorted key order, films in
    their order): what a patient bootstrap draws whole."""
    _, codes = np.unique(np.asarray(groups, str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def draw_groups(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The film indices of one bootstrap resample: as many groups as there are, drawn with replacement."""
    return np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


CI_METRICS = ("accuracy", "sensitivity", "specificity", "false_positive_rate", "precision", "f1", "roc_auc")


def bootstrap_ci(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    metric_fn: Callable[..., dict[str, Any]] = resample_metrics,
    groups: Sequence[str] | None = None,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals for the metrics ``evaluate`` reports.

    Resamples images, or with ``groups`` (one key per image, e.g. its patient) whole groups with
    all their images: films of one patient are not independent, and resampling them one by one
    gives intervals that are too narrow.
    """
    y, p = np.asarray(y, int), np.asarray(p, float)
    rng = np.random.default_rng(seed)
    members: list[np.ndarray] = []
    if groups is not None:
        if len(groups) != y.size:
            raise ValueError(f"groups has {len(groups)} keys for {y.size} images")
        members = patient_groups(groups)
    draws: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(n_boot):
        if members:
            i = draw_groups(members, rng)
        else:
            i = rng.integers(0, y.size, y.size)
        m = metric_fn(y[i], p[i], threshold)
        for k in CI_METRICS:
            if m[k] is not None:
                draws[k].append(m[k])
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {k: [float(np.quantile(v, lo)), float(np.quantile(v, hi))] if v else None for k, v in draws.items()}
