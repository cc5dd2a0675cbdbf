"""Is one model better than another on these films? A paired comparison, by patient.

``pneumolens compare A B --data DIR`` scores both models on the same films (a dataset's ``test``
split, class folders or a CSV manifest, as ``evaluate`` reads them) and gives, for ROC-AUC and for
accuracy, sensitivity and specificity at each model's own operating point, B minus A with a
percentile bootstrap interval that resamples whole patients with the same draw for both models (a
paired interval: the films' difficulty cancels). An interval holding zero says these films cannot
tell the two apart. The calls are also compared film by film: how many films only A gets right and
only B, and the exact McNemar test on those (which counts films as independent, unlike the
intervals).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pneumolens.checkpoint import LoadedModel
from pneumolens.data.sources import check_headers, find_split
from pneumolens.evaluation.calibration import draw_groups, patient_groups
from pneumolens.evaluation.metrics import binary_metrics, resample_metrics
from pneumolens.inference import default_workers, predict_samples

DIFFERENCES = ("roc_auc", "accuracy", "sensitivity", "specificity")


def compare(
    a: LoadedModel,
    b: LoadedModel,
    data: str | os.PathLike[str],
    thresholds: tuple[float | None, float | None] = (None, None),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Both models' metrics on the films of ``data`` both could read, B minus A with paired
    patient-bootstrap intervals (``difference``), and the film-by-film McNemar test (``calls``).
    ``thresholds`` overrides a model's own operating point. Raises ``ValueError`` when no film can
    be read or the films hold one class only."""
    samples, bad = check_headers(find_split(data, "test"))
    workers = default_workers(len(samples))
    probs, errors = {}, {}
    for key, loaded in (("a", a), ("b", b)):
        probs[key], errors[key] = predict_samples(loaded.model, samples, loaded.preprocess, num_workers=workers)
    both = [s for s in samples if s.path in probs["a"] and s.path in probs["b"]]
    if not both:
        raise ValueError(f"{data}: none of the {len(samples) + len(bad)} image(s) could be read")
    y = np.array([s.label for s in both])
    if y.min() == y.max():
        raise ValueError(f"{data}: the {len(both)} films read hold one class only; a comparison needs both")
    p = {key: np.array([probs[key][s.path] for s in both]) for key in probs}
    t = [float(loaded.threshold if given is None else given) for loaded, given in zip((a, b), thresholds, strict=True)]
    c = compare_scores(y, p["a"], p["b"], (t[0], t[1]), [s.patient for s in both], n_boot, level, seed)
    skipped = bad + sorted({**errors["a"], **errors["b"]}.items())
    c["n_skipped"], c["skipped"] = len(skipped), [{"path": path, "reason": reason} for path, reason in skipped]
    c["a"].update(model=a.meta.get("name"), path=str(a.path))
    c["b"].update(model=b.meta.get("name"), path=str(b.path))
    return c


def compare_scores(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    thresholds: tuple[float, float],
    patients: list[str],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of two models' probabilities ``p_a`` and ``p_b`` on the same films (labels
    ``y``, one patient key per film), each called at its threshold. Raises ``ValueError`` when the
    films hold one class only."""
    from scipy.stats import binomtest

    y, p = np.asarray(y, int), {"a": np.asarray(p_a, float), "b": np.asarray(p_b, float)}
    if y.size == 0 or y.min() == y.max():
        raise ValueError(f"{y.size} films of one class at most: a comparison needs both classes")
    t = dict(zip("ab", thresholds, strict=True))
    keys = np.asarray(patients, str)
    right = {key: (p[key] >= t[key]).astype(int) == y for key in p}
    only_a, only_b = int((right["a"] & ~right["b"]).sum()), int((right["b"] & ~right["a"]).sum())
    discordant = only_a + only_b
    m = {key: binary_metrics(y, p[key], t[key]) for key in p}
    return {
        "n": int(y.size),
        "n_patients": len(set(keys.tolist())),
        "level": level,
        "a": m["a"],
        "b": m["b"],
        "difference": _paired_intervals(y, p, t, keys, n_boot, level, seed, m),
        "calls": {
            "only_a_right": only_a,
            "only_b_right": only_b,
            "mcnemar_p": float(binomtest(only_b, discordant, 0.5).pvalue) if discordant else 1.0,
        },
    }


def _paired_intervals(
    y: np.ndarray,
    p: dict[str, np.ndarray],
    t: dict[str, float],
    patients: np.ndarray,
    n_boot: int,
    level: float,
    seed: int,
    whole: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """B minus A for each of ``DIFFERENCES`` (from ``whole``, each model's metrics on all the films),
    with the percentile interval of the same quantity over ``n_boot`` resamples of whole patients (a
    resample holding one class only is drawn again)."""
    members = patient_groups(patients)
    rng = np.random.default_rng(seed)
    point = {k: whole["b"][k] - whole["a"][k] for k in DIFFERENCES}
    draws: dict[str, list[float]] = {k: [] for k in DIFFERENCES}
    while len(draws["roc_auc"]) < n_boot:
        i = draw_groups(members, rng)
        if not 0 < y[i].sum() < i.size:
            continue
        ma, mb = resample_metrics(y[i], p["a"][i], t["a"]), resample_metrics(y[i], p["b"][i], t["b"])
        for k in DIFFERENCES:
            draws[k].append(mb[k] - ma[k])
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {
        k: {"value": float(point[k]), "ci": [float(np.quantile(draws[k], lo)), float(np.quantile(draws[k], hi))]}
        for k in DIFFERENCES
    }


def format_comparison(c: dict[str, Any]) -> str:
    """The comparison as a markdown table and a sentence on the calls."""
    a, b = c["a"], c["b"]
    pct = int(round(100 * c["level"]))
    lines = [
        f"{c['n']} films of {c['n_patients']} patients read by both models ({c['n_skipped']} skipped); "
        f"B minus A, {pct}% intervals resampling patients",
        "",
        f"| | A: {a['model']} (at {a['threshold']:.3f}) | B: {b['model']} (at {b['threshold']:.3f}) "
        f"| B minus A | {pct}% interval |",
        "|---|---|---|---|---|",
    ]
    for key in DIFFERENCES:
        d, name = c["difference"][key], "ROC-AUC" if key == "roc_auc" else key
        if key == "roc_auc":
            row = f"{a[key]:.4f} | {b[key]:.4f} | {d['value']:+.4f} | [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
        else:
            lo, hi = 100 * d["ci"][0], 100 * d["ci"][1]
            row = f"{100 * a[key]:.1f}% | {100 * b[key]:.1f}% | {100 * d['value']:+.1f} | [{lo:+.1f}, {hi:+.1f}]"
        lines.append(f"| {name} | {row} |")
    calls = c["calls"]
    lines += [
        "",
        f"calls: only A right on {calls['only_a_right']} films, only B right on {calls['only_b_right']} "
        f"(exact McNemar p = {calls['mcnemar_p']:.3g}; it counts films as independent, the intervals do not)",
        "confusion [[tn, fp], [fn, tp]]: A " + str(a["confusion_matrix"]) + ", B " + str(b["confusion_matrix"]),
    ]
    return "\n".join(lines)
