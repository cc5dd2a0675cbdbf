"""A model card (Mitchell et al. 2019) for any model file, written from what the file records.

``pneumolens card`` puts together what a reader of a model needs before trusting a call: what the
network is and what it reads, how it was trained and on how many films, its operating point and
calibration, the figures it was chosen on (validation), the figures it was measured on (``evaluate
--json`` files given to it, and for the shipped weights the test figures recorded beside them), and
what it was not measured on. Nothing is measured here: every number comes from the file or from
the evaluations handed in, each said with where it comes from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pneumolens.checkpoint import LoadedModel, read_header, shipped_model_path
from pneumolens.evaluation.prevalence import predictive_values

SHIPPED_DATA = {  # what the shipped model learnt from and was reported on (its own card says more)
    "trained_on": "frontal chest X-rays of children aged one to five from one hospital (Guangzhou Women "
    "and Children's Medical Center; Kermany et al. 2018): the training split of the Kaggle set",
    "tested_on": "that set's official test split, films of the same hospital's children, read once",
}
CLINIC_PREVALENCES = (0.05, 0.15, 0.3)  # shares of films with pneumonia the card gives predictive values at


def shipped_test_record(sha256: str) -> dict[str, Any] | None:
    """The shipped model's recorded test figures (``assets/default_test_metrics.json``: the rates at
    its operating point, ROC-AUC and their 95% patient-bootstrap intervals) when ``sha256`` names its
    weights, else None: a model card shows what was measured on the model it describes, and no other."""
    if sha256 != read_header(shipped_model_path()).get("weights_sha256"):  # its header: no network built
        return None
    record = json.loads(shipped_model_path().with_name("default_test_metrics.json").read_text())
    keys = ("accuracy", "sensitivity", "specificity", "roc_auc")
    return {
        **SHIPPED_DATA,
        "n": record["n"],
        "n_patients": record.get("n_patients"),
        "n_positive_share": record["n_positive"] / record["n"],
        "threshold": record["threshold"],
        **{k: record[k] for k in keys},
        "ci": {k: record["ci"][k] for k in keys if k in record.get("ci", {})},
        "confusion_matrix": record["confusion_matrix"],
        # how often its calls would be right where pneumonia is rarer than on the test split (62.5%)
        "at_prevalence": [_predictive(record, q) for q in CLINIC_PREVALENCES],
    }


def _predictive(record: dict[str, Any], prevalence: float) -> dict[str, float | None]:
    ppv, npv = predictive_values(record["sensitivity"], record["specificity"], prevalence)
    return {"prevalence": prevalence, "ppv": ppv, "npv": npv}


def read_evaluations(paths: list[str | os.PathLike[str]], loaded: LoadedModel) -> list[tuple[str, dict[str, Any]]]:
    """(file, metrics) of each ``evaluate --json`` file, checked to be an evaluation of this model.

    Raises:
        ValueError: a file unreadable, not an evaluation, or of another model, named.
    """
    out = []
    name = loaded.meta.get("name")
    for path in paths:
        try:
            m = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable evaluate --json file ({e})") from None
        if not isinstance(m, dict) or not all(k in m for k in ("n", "accuracy", "sensitivity", "specificity")):
            raise ValueError(f"{path}: not an evaluate --json file (no n, accuracy, sensitivity and specificity)")
        if m.get("model") != name:
            raise ValueError(f"{path}: an evaluation of {m.get('model')!r}, not of this model ({name!r})")
        out.append((str(path), m))
    return out


def _pct(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _auc(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _row(label: str, m: dict[str, Any], ci: dict[str, Any] | None) -> str:
    ci = ci or {}
    cells = [
        label,
        str(m["n"]),
        _pct(m["accuracy"], ci.get("accuracy")),
        _pct(m["sensitivity"], ci.get("sensitivity")),
        _pct(m["specificity"], ci.get("specificity")),
        _auc(m.get("roc_auc"), ci.get("roc_auc")),
    ]
    return "| " + " | ".join(cells) + " |"


def _parameters(loaded: LoadedModel) -> int:
    return sum(p.numel() for p in loaded.model.parameters())


def model_card(loaded: LoadedModel, evaluations: list[tuple[str, dict[str, Any]]] = ()) -> str:
    """The card of ``loaded`` in Markdown, with ``evaluations`` (``read_evaluations``) as its measured figures."""
    meta, cfg = loaded.meta, loaded.meta.get("config", {})
    pre, arch = loaded.preprocess, meta.get("architecture", {})
    name = meta.get("name", "unknown")
    lines = [
        f"# Model card: {name}",
        "",
        "> **Decision support, not a diagnosis.** This model estimates the probability that a chest X-ray",
        "> shows pneumonia, to inform a clinician who reads the image. It is not a medical device.",
        "",
        "## What it is",
        "",
        f"- File: `{loaded.path}` ({loaded.path.stat().st_size / 1e6:.1f} MB), weights SHA-256 `{loaded.sha256}`",
        f"- Network: `{arch.get('name')}`"
        + ("" if arch.get("name") == "ensemble" else f" {json.dumps(arch.get('kwargs', {}))}")
        + f", {_parameters(loaded):,} parameters",
    ]
    if members := meta.get("members"):
        lines.append(f"- An ensemble of {len(members)} networks (mean logit): " + ", ".join(m["name"] for m in members))
    if averaged := meta.get("averaged_weights_of"):
        lines.append(
            f"- The weight average of {len(averaged)} fine-tunes (seeds {', '.join(str(m['seed']) for m in averaged)})"
        )
    start = cfg.get("init")
    lines.append(
        f"- Fine-tuned from the model its config names, `{start}` (the path when it was trained)"
        if start
        else "- Trained from scratch (no pretrained weights)"
    )
    lines += [
        f"- Reads: grayscale at {pre.image_size}x{pre.image_size}"
        + (f" (copied to {pre.channels} channels)" if pre.channels > 1 else "")
        + f", lungs `{pre.lungs}`"
        + (f", exposure normalised on the lungs to a median of {pre.lung_gamma}" if pre.lung_gamma else "")
        + (f", CLAHE (clip {pre.clahe_clip})" if pre.equalize == "clahe" else "")
        + "; pixels in [0, 1], 0 black",
        f"- Software: {', '.join(f'{k} {v}' for k, v in sorted(meta.get('versions', {}).items()))}",
        "",
        "## Training",
        "",
    ]
    training = meta.get("training", {})
    counts = training.get("counts", {})
    if counts:
        for split in ("train", "val"):
            c = counts.get(split, {})
            lines.append(
                f"- {'Training' if split == 'train' else 'Validation'} films: "
                + ", ".join(f"{k} {v}" for k, v in c.items())
            )
        lines.append(
            "- The validation films are held out by patient; the operating point and the epoch are chosen on them"
        )
    first = " (the first averaged fine-tune's)" if meta.get("averaged_weights_of") else ""
    first = " (the first member's)" if meta.get("members") else first
    lines.append(
        f"- Recipe{first}: preset `{cfg.get('preset')}`, {cfg.get('epochs')} epochs, seed {cfg.get('seed')}"
        + (
            f" ({training['epochs_run']} run, in {training.get('precision')}, {training['wall_seconds'] / 60:.1f} min)"
            if training.get("epochs_run")
            else ""
        )
    )
    lines += [
        "- Its config is recorded in the file; `pneumolens card` prints it below, and "
        "`pneumolens train --data DATA --config CONFIG.json` trains that recipe again",
        "",
        "## Operating point and calibration",
        "",
    ]
    cal, metrics = meta.get("calibration", {}), meta.get("metrics", {})
    val = metrics.get("val")
    lines.append(f"- Threshold {loaded.threshold:.3f} (`{cal.get('threshold_policy', 'fixed')}` on validation)")
    if cal:
        lines.append(
            f"- Temperature {cal.get('temperature', 1.0):.3f}; expected calibration error on validation "
            f"{cal.get('ece_before', float('nan')):.3f} before, {cal.get('ece_after', float('nan')):.3f} after"
        )
    if band := loaded.borderline:
        lines.append(
            f"- Borderline band {band['low']:.3f} to {band['high']:.3f}: the least sure calls "
            f"(set on {band.get('n', '?')} validation films); a probability there could go either way"
        )
    if val and val.get("roc_auc") is not None and val["roc_auc"] < 0.7:
        lines += [
            "",
            f"**Warning**: validation ROC-AUC {val['roc_auc']:.3f}: this model does not separate the classes.",
        ]
    lines += [
        "",
        "## Figures",
        "",
        "| films | n | accuracy | sensitivity | specificity | ROC-AUC |",
        "|---|---|---|---|---|---|",
    ]
    if val:
        lines.append(_row("validation (chosen on)", val, None))
    if twin := metrics.get("holdout_val"):  # a refit trained on its validation films: its twin's figures
        lines.append(_row("validation of its held-out twin (a refit: it trained on these films too)", twin, None))
    recorded = shipped_test_record(loaded.sha256)
    if recorded:
        lines.append(_row(f"test (recorded for these weights; {recorded['tested_on']})", recorded, recorded["ci"]))
    for path, m in evaluations:
        label = f"`{Path(path).name}` ({m.get('split', 'test')}" + (
            f", {m['n_patients']} patients)" if m.get("n_patients") else ")"
        )
        lines.append(_row(label, m, m.get("ci")))
    lines += ["", "Brackets: 95% bootstrap intervals over patients, where the evaluation gave them."]
    rare = [(f"`{Path(p).name}`", m["at_prevalence"]) for p, m in evaluations if m.get("at_prevalence")]
    if recorded:
        rare.insert(0, ("the recorded test figures", recorded["at_prevalence"]))
    if rare:
        lines += [
            "",
            "Where pneumonia is rarer or commoner than on the films scored (from their sensitivity and specificity):",
            "",
        ]
        for source, rows in rare:
            said = "; ".join(
                f"at {100 * r['prevalence']:g}%, pneumonia calls right {_pct(r['ppv'])}, normal calls {_pct(r['npv'])}"
                for r in rows
            )
            lines.append(f"- {source}: {said}")
    lines += [
        "",
        "## Limitations",
        "",
        "- Measured only on the films above. Films unlike its training films (adults, lateral views, other",
        "  hospitals, other detectors) were not measured unless a row says so; try it on your own films first",
        "  (`pneumolens evaluate`, docs/site-validation.md).",
        "- A call is a probability against an operating point: the reader weighs it and makes the diagnosis.",
    ]
    if recorded:
        lines.append(f"- Learnt from {recorded['trained_on']}.")
    lines += ["", "## Config", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
