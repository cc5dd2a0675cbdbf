"""Scoring a model on a labelled folder: metrics, per-image predictions, skipped files."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import LoadedModel
from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import Sample, check_headers, find_split
from pneumolens.data.subgroups import grouped_by, subgroup
from pneumolens.evaluation.calibration import bootstrap_ci, expected_calibration_error
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.prevalence import at_prevalences
from pneumolens.evaluation.selective import borderline_flags, borderline_metrics, risk_coverage
from pneumolens.inference import default_workers, predict_samples
from pneumolens.lungs.flags import GREY_LUNGS_FLAG, check_flags


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    samples: list[Sample]  # the scored ones, in order
    probabilities: list[float]
    skipped: list[tuple[str, str]]  # (path, reason)
    flags: dict[str, list[str]] = field(default_factory=dict)  # path -> its flags (the caution included)


def scored_metrics(
    y: Sequence[int], p: Sequence[float], threshold: float, patients: Sequence[str], n_boot: int = 1000
) -> dict[str, Any]:
    """The metrics at ``threshold``, ECE, and 95% percentile bootstrap intervals over ``patients``
    (a patient's films are drawn together)."""
    metrics = binary_metrics(y, p, threshold)
    metrics["ece"] = expected_calibration_error(y, p)
    metrics["ci"] = bootstrap_ci(y, p, threshold, n_boot=n_boot, groups=patients)
    metrics["ci_resamples"] = "patients"
    metrics["n_patients"] = len(set(patients))
    return metrics


def subgroup_metrics(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    patients: Sequence[str],
    subgroups: Sequence[str],
    n_boot: int = 1000,
) -> dict[str, dict[str, Any]]:
    """Per ``CLASS/group`` subgroup: its films and patients, its own rate at ``threshold`` (the
    specificity of a normal subgroup, the sensitivity of a pneumonia one) with a 95% bootstrap
    interval over its patients, and the ROC-AUC of its films against every film of the other class."""
    y_arr, p_arr, g_arr = np.asarray(y, int), np.asarray(p, float), np.asarray(subgroups, str)
    pats = np.asarray(patients, str)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(subgroups), key=lambda g: (CLASS_NAMES.index(g.split("/")[0]), g)):
        inside = g_arr == name
        label = int(y_arr[inside][0])
        rate = "sensitivity" if label else "specificity"
        m = binary_metrics(y_arr[inside], p_arr[inside], threshold)
        ci = bootstrap_ci(y_arr[inside], p_arr[inside], threshold, n_boot=n_boot, groups=pats[inside])
        other = y_arr != label
        vs = np.concatenate([p_arr[inside], p_arr[other]])
        truth = np.concatenate([np.full(inside.sum(), label), y_arr[other]])
        out[name] = {
            "n": int(inside.sum()),
            "n_patients": len(set(pats[inside])),
            "rate": rate,
            "value": m[rate],
            "ci": ci[rate],
            "roc_auc_vs_other_class": float(roc_auc_score(truth, vs)) if other.any() else None,
        }
    return out


CAUTION = GREY_LUNGS_FLAG  # the result is less reliable, not the input wrong


def _apart(
    flagged: np.ndarray,
    names: tuple[str, str],
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    patients: Sequence[str],
    **boot: Any,
) -> Iterator[tuple[str, np.ndarray, dict[str, Any], dict[str, Any]]]:
    """For the ``flagged`` films and the others (``names``, in that order), those that exist: the name,
    which films, their metrics at ``threshold`` and 95% bootstrap intervals over their patients."""
    y_arr, p_arr, pats = np.asarray(y, int), np.asarray(p, float), np.asarray(patients, str)
    for name, inside in zip(names, (flagged, ~flagged), strict=True):
        if inside.any():
            m = binary_metrics(y_arr[inside], p_arr[inside], threshold)
            yield name, inside, m, bootstrap_ci(y_arr[inside], p_arr[inside], threshold, groups=pats[inside], **boot)


def caution_metrics(
    cautioned: Sequence[bool],
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    patients: Sequence[str],
    **boot: Any,
) -> dict[str, dict[str, Any]]:
    """How right the pneumonia calls are with and without the ``grey_lungs`` caution: for the films
    that carry it and for the others, their count, the pneumonia calls among them, the share of
    those calls that are right (precision, PPV) with a 95% bootstrap interval over the patients, and
    the specificity on their normal films (``boot``: ``bootstrap_ci``'s options). A site can check
    here whether the caution holds on its films."""
    flag = np.asarray(cautioned, bool)
    out: dict[str, dict[str, Any]] = {}
    for name, inside, m, ci in _apart(flag, (CAUTION, f"without {CAUTION}"), y, p, threshold, patients, **boot):
        (_, fp), (_, tp) = m["confusion_matrix"]
        out[name] = {
            "n": int(inside.sum()),
            "n_normal": m["n_negative"],
            "pneumonia_calls": int(tp + fp),
            "precision": m["precision"],
            "precision_ci": ci["precision"],
            "specificity": m["specificity"],
        }
    return out


CHECKED, UNCHECKED = "with a check flag", "without a check flag"


def check_metrics(
    flags: Sequence[Sequence[str]],
    y: Sequence[int],
    p: Sequence[float],
    threshold: float,
    patients: Sequence[str],
    **boot: Any,
) -> dict[str, Any]:
    """How often each flag that asks to check the image (every flag but the ``grey_lungs`` caution)
    was raised on the scored films (``counts``), and how the model read the films with such a flag
    and the others: their count, normal films, accuracy with a 95% bootstrap interval over the
    patients (``boot``: ``bootstrap_ci``'s options), sensitivity and specificity (None without
    films of that class). A site sees here how many of its films ask for a check and whether the
    model reads them worse."""
    checks = [check_flags(f) for f in flags]
    counts = Counter(f for c in checks for f in c)
    out: dict[str, Any] = {"counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}
    flagged = np.array([bool(c) for c in checks], bool)
    for name, inside, m, ci in _apart(flagged, (CHECKED, UNCHECKED), y, p, threshold, patients, **boot):
        out[name] = {
            "n": int(inside.sum()),
            "n_normal": m["n_negative"],
            "accuracy": m["accuracy"],
            "accuracy_ci": ci["accuracy"],
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
        }
    return out


def validation_films(loaded: LoadedModel, data: str | os.PathLike[str]) -> list[Sample]:
    """The films ``loaded`` was validated on: the patient split its recorded config draws from
    ``data``'s training films (a Kaggle-style root), checked against the count it recorded.

    Raises:
        ValueError: a model without a training config, one trained on its validation films (a
            refit), or another split than the one it recorded (another ``data``).
    """
    from pneumolens.config import TrainConfig
    from pneumolens.training.fit import training_split

    config = loaded.meta.get("config")
    if not isinstance(config, dict) or "split_seed" not in config:
        raise ValueError(f"{loaded.path}: no training config recorded, so no validation split to draw")
    cfg = TrainConfig.from_dict(config)
    if cfg.refit:
        raise ValueError(f"{loaded.path}: a refit trained on its validation films; score it on test only")
    recorded = loaded.meta.get("metrics", {}).get("val", {}).get("n")
    try:
        val = training_split(data, cfg)[0].val
    except ValueError as e:  # too few films or patients to carve any split: not the data it was trained on
        if recorded is None:
            raise
        raise ValueError(
            f"{loaded.path}: validated on {recorded} films, but {data} cannot give them ({e}); "
            "give the data it was trained on"
        ) from None
    if recorded is not None and recorded != len(val):
        raise ValueError(
            f"{loaded.path}: validated on {recorded} films, but {data} gives {len(val)}; "
            "give the data it was trained on"
        )
    return val


def evaluate(
    loaded: LoadedModel,
    data: str | os.PathLike[str],
    threshold: float | None = None,
    n_boot: int = 1000,
    group_by: str | None = None,
    split: str = "test",
    prevalences: Sequence[float] = (),
) -> Evaluation:
    """Score ``loaded`` on ``data``'s test split (or its class folders / CSV manifest). ``group_by``:
    a DICOM device or acquisition attribute to report subgroups by (``subgroups.DEVICE_ATTRIBUTES``),
    or ``lung-exposure`` (``subgroups.lung_exposure``). ``split="validation"``: the validation films
    the model's recorded training config draws from ``data``'s training films, by patient, where
    choices belong (not for a model that trained on them). ``prevalences``: shares of pneumonia films
    to give the calls' predictive values at (``evaluation.prevalence``)."""
    listed = validation_films(loaded, data) if split == "validation" else find_split(data, "test")
    if group_by:
        listed = grouped_by(listed, group_by)
    samples, bad = check_headers(listed)
    flags: dict[str, list[str]] = {}  # the lung mask the flags need is the one lung-aware preprocessing uses
    probs, errors = predict_samples(
        loaded.model, samples, loaded.preprocess, num_workers=default_workers(len(samples)), flags=flags
    )
    skipped = bad + sorted(errors.items())
    scored = [s for s in samples if s.path in probs]
    if not scored:
        raise ValueError(f"{data}: none of the {len(samples) + len(bad)} image(s) could be read")
    t = loaded.threshold if threshold is None else threshold
    p = [probs[s.path] for s in scored]
    for s in scored:
        flags[s.path] = flags[s.path] + borderline_flags(
            probs[s.path], loaded.borderline
        )  # as deployed: the model's own band
    y = [s.label for s in scored]
    patients = [s.patient for s in scored]
    metrics = scored_metrics(y, p, t, patients, n_boot)
    metrics["selective"] = {
        "risk_coverage": risk_coverage(y, p, t),
        "borderline": borderline_metrics(y, p, t, loaded.borderline if t == loaded.threshold else None),
    }
    metrics["subgroups"] = subgroup_metrics(
        y, p, t, patients, [subgroup(s.path, s.label, s.group) for s in scored], n_boot
    )
    if prevalences:
        metrics["at_prevalence"] = at_prevalences(y, p, t, prevalences, patients, n_boot=n_boot)
    metrics["caution"] = caution_metrics([CAUTION in flags[s.path] for s in scored], y, p, t, patients, n_boot=n_boot)
    metrics["checks"] = check_metrics([flags[s.path] for s in scored], y, p, t, patients, n_boot=n_boot)
    # films whose name, manifest or DICOM header gives no patient each count as their own patient
    metrics["films_of_unknown_patient"] = sum(s.patient.startswith("file:") for s in scored)
    metrics["model"] = loaded.meta.get("name")
    metrics["split"] = split
    metrics["n_skipped"] = len(skipped)
    metrics["skipped"] = [{"path": path, "reason": reason} for path, reason in skipped]
    return Evaluation(metrics, scored, p, skipped, {s.path: flags[s.path] for s in scored})


def format_table(m: dict[str, Any]) -> str:
    ci = m.get("ci", {})

    def pct(v: float | None, key: str = "", lo_hi: list[float] | None = None) -> str:
        if v is None:
            return "n/a"
        lo_hi = lo_hi or ci.get(key)
        return f"{100 * v:.1f}%" + (f"  [{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]" if lo_hi else "")

    (tn, fp), (fn, tp) = m["confusion_matrix"]
    rows = [
        ("images", str(m["n"]) + (" (the validation films)" if m.get("split") == "validation" else "")),
        ("threshold", f"{m['threshold']:.3f}"),
        ("accuracy", pct(m["accuracy"], "accuracy")),
        ("sensitivity (recall)", pct(m["sensitivity"], "sensitivity")),
        ("specificity", pct(m["specificity"], "specificity")),
        ("false-positive rate", pct(m["false_positive_rate"], "false_positive_rate")),
        ("precision (PPV)", pct(m["precision"], "precision")),
        ("F1", "n/a" if m["f1"] is None else f"{m['f1']:.3f}"),
        ("ROC-AUC", "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}" + _ci3(ci.get("roc_auc"))),
        ("confusion [[tn, fp], [fn, tp]]", f"[[{tn}, {fp}], [{fn}, {tp}]]"),
    ]
    for r in m.get("at_prevalence", []):
        rows.append(
            (
                f"  where {100 * r['prevalence']:g}% have pneumonia",
                f"a pneumonia call right {pct(r['ppv'], lo_hi=r['ci']['ppv'])}, "
                f"a normal call right {pct(r['npv'], lo_hi=r['ci']['npv'])}",
            )
        )
    for name, g in m.get("subgroups", {}).items():
        auc = g["roc_auc_vs_other_class"]
        rows.append(
            (
                f"  {name} ({g['n']})",
                f"{g['rate']} {pct(g['value'], lo_hi=g['ci'])}"
                + ("" if auc is None else f", ROC-AUC vs the other class {auc:.4f}"),
            )
        )
    for name, c in m.get("caution", {}).items():
        calls = f"{c['pneumonia_calls']} pneumonia call{'s' if c['pneumonia_calls'] != 1 else ''}"
        rows.append(
            (
                f"  {name} ({c['n']})",
                f"{calls}, right {pct(c['precision'], lo_hi=c['precision_ci'])}" if c["pneumonia_calls"] else calls,
            )
        )
    checks = m.get("checks", {})
    if checks:
        counts = ", ".join(f"{f} {n}" for f, n in checks["counts"].items()) or "none"
        rows.append(("  check flags", counts))
    for name in (CHECKED, UNCHECKED) if CHECKED in checks else ():  # no rows when no film asks for a check
        if c := checks.get(name):
            rows.append((f"  {name} ({c['n']})", f"accuracy {pct(c['accuracy'], lo_hi=c['accuracy_ci'])}"))
    selective = m.get("selective") or {}
    if band := selective.get("borderline"):
        for name in ("borderline", "others"):
            part = band[name]
            rows.append((f"  {name} ({part['n']})", f"{part['errors']} error(s), accuracy {pct(part['accuracy'])}"))
    for r in selective.get("risk_coverage", [])[1:]:  # the first row (all films) is the table above
        rows.append(
            (
                f"  the {r['coverage']:.0%} farthest from the threshold",
                f"accuracy {pct(r['accuracy'])}, {r['errors']} error(s) kept, {r['deferred_errors']} left to a reader",
            )
        )
    if m.get("n_skipped"):
        rows.append(("skipped (unreadable)", str(m["n_skipped"])))
    if ci:
        unit = f"over {m['n_patients']} patients" if m.get("n_patients") else "over images"
        rows.append(("", f"[95% bootstrap interval {unit}]"))
    if unknown := m.get("films_of_unknown_patient"):
        rows.append(
            (
                "",
                f"[{unknown} film(s) of unknown patient, each counted as its own: intervals too narrow if a patient "
                "has several; a manifest's patient column says]",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _ci3(lo_hi: list[float] | None) -> str:
    return f"  [{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else ""
