"""One HTML page with PNG figures: counts, samples, training curves, confusion matrix, ROC,
calibration (reliability diagram), decision curve, and risk against coverage."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, classification_report  # noqa: E402

from pneumolens.config import CLASS_NAMES  # noqa: E402
from pneumolens.data.images import ImageReadError, read_image  # noqa: E402
from pneumolens.evaluation.evaluate import Evaluation, format_table  # noqa: E402
from pneumolens.evaluation.metrics import net_benefit  # noqa: E402
from pneumolens.evaluation.selective import in_band, risk_coverage  # noqa: E402

NOTICE = (
    "pneumolens supports a clinician's reading of a chest X-ray; it does not make a diagnosis. "
    "These figures describe a research model on one pediatric dataset."
)


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_class_counts(counts: dict[str, dict[str, int]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    parts = list(counts)
    x = np.arange(len(parts))
    for i, name in enumerate(CLASS_NAMES):
        vals = [counts[p].get(name, 0) for p in parts]
        bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=name)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, parts)
    ax.set_ylabel("images")
    ax.set_title("Class counts")
    ax.legend()
    return _save(fig, path)


def plot_samples(ev: Evaluation, threshold: float, path: Path, per_class: int = 6, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, per_class, figsize=(2 * per_class, 4.6))
    for row, name in enumerate(CLASS_NAMES):
        idx = [i for i, s in enumerate(ev.samples) if s.label == row]
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if idx else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(pick):
                continue
            i = int(pick[col])
            try:
                ax.imshow(read_image(ev.samples[i].path), cmap="gray", vmin=0, vmax=1)
            except ImageReadError:
                continue
            p = ev.probabilities[i]
            ok = (p >= threshold) == bool(row)
            ax.set_title(f"{name}\np={p:.2f}", fontsize=8, color="green" if ok else "red")
    fig.suptitle("Samples per class (title: true class, predicted probability; red = misclassified)", fontsize=9)
    return _save(fig, path)


def plot_curves(history: list[dict[str, float]], path: Path) -> str | None:
    if not history:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] + 1 for h in history]
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for part in ("train", "val"):
            ys = [h.get(f"{part}_{metric}", np.nan) for h in history]
            ax.plot(epochs, ys, marker="o", label=part)
        ax.set_xlabel("epoch")
        ax.set_title({"loss": "Loss", "acc": "Accuracy"}[metric])
        ax.legend()
    return _save(fig, path)


def plot_confusion(cm: list[list[int]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay(np.array(cm), display_labels=list(CLASS_NAMES)).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def plot_roc(y: list[int], p: list[float], path: Path) -> str | None:
    if len(set(y)) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name="model")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_title("ROC curve (PNEUMONIA positive)")
    return _save(fig, path)


def plot_calibration(y: list[int], p: list[float], path: Path, ece: float | None = None) -> str | None:
    """Reliability diagram: the share of pneumonia films against the mean probability, in ten bins of
    equal count (sklearn's ``CalibrationDisplay``)."""
    if len(set(y)) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, strategy="quantile", ax=ax, name="model")
    ax.set_xlabel("mean probability of pneumonia (10 bins of equal count)")
    ax.set_ylabel("share of pneumonia films")
    ax.set_title("Calibration" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    return _save(fig, path)


def plot_decision_curve(y: list[int], p: list[float], threshold: float, path: Path) -> str | None:
    """Net benefit of the model, of calling every film pneumonia and of calling none, over threshold
    probabilities 0.01-0.99, with the model's operating point marked."""
    if len(set(y)) < 2:
        return None
    pt = np.linspace(0.01, 0.99, 99)
    model = net_benefit(y, p, pt)
    everyone = net_benefit(y, [1.0] * len(y), pt)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot(pt, model, label="model")
    ax.plot(pt, everyone, "k:", lw=1, label="call every film pneumonia")
    ax.axhline(0, color="grey", lw=1, label="call none")
    ax.axvline(threshold, color="tab:red", lw=0.8, ls="--", label=f"operating point {threshold:.3f}")
    prevalence = float(np.mean(y))
    ax.set_ylim(-0.05 * max(prevalence, 0.01), max(prevalence, 0.01) * 1.1)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit (true positives per film)")
    ax.set_title("Decision curve")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def _explanations_html(x: dict[str, Any] | None) -> str:
    if not x:
        return ""
    lf, n = x["lung_fraction"], x["n"]

    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    rows = "".join(
        f"<tr><td>{name}</td><td>{cell(lf[k])}</td><td>{sum(n[c] for c in cs)}</td></tr>"
        for name, k, cs in (
            ("correct", "correct", ("tp", "tn")),
            ("wrong", "wrong", ("fp", "fn")),
            ("true positives", "tp", ("tp",)),
            ("true negatives", "tn", ("tn",)),
            ("false positives", "fp", ("fp",)),
            ("false negatives", "fn", ("fn",)),
        )
    )
    return f"""<h2>Explanations of the errors ({html.escape(x["method"])})</h2>
<p>Share of positive attribution inside the lung fields (lung segmenter), mean per outcome:</p>
<table border="1" cellpadding="4"><tr><th>predictions</th><th>mean lung fraction</th><th>n</th></tr>{rows}</table>
<figure><img src="errors_explained.png" alt="false positives and negatives explained"></figure>"""


def plot_risk_coverage(
    y: list[int], p: list[float], threshold: float, path: Path, band: dict[str, Any] | None = None
) -> str | None:
    """Accuracy of the calls kept against the share of films kept, the films nearest the threshold
    going to a reader first (``selective.risk_coverage``), with the share outside the model's
    ``borderline`` band marked."""
    if not y:
        return None
    rows = risk_coverage(y, p, threshold, np.linspace(0.5, 1.0, 51))
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot([r["coverage"] for r in rows], [r["accuracy"] for r in rows], label="calls kept")
    if band is not None:
        kept = float(np.mean([not in_band(v, band) for v in p]))
        ax.axvline(kept, color="tab:red", lw=0.8, ls="--", label=f"outside the borderline band ({kept:.0%})")
    ax.set_xlabel("share of films kept (the nearest the threshold to a reader)")
    ax.set_ylabel("accuracy of the calls kept")
    ax.set_title("Risk and coverage")
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def write_report(
    ev: Evaluation,
    meta: dict[str, Any],
    out_dir: str | os.PathLike[str],
    title: str,
    explanations: dict[str, Any] | None = None,
) -> Path:
    """Write ``index.html`` and its PNGs into ``out_dir``; returns the HTML path.

    ``explanations`` is what :func:`pneumolens.evaluation.error_explanations.explain_errors` returned
    (it drew ``errors_explained.png`` into the same folder).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = ev.metrics
    y = [s.label for s in ev.samples]
    counts = dict(meta.get("training", {}).get("counts", {}))
    counts["evaluated"] = {name: sum(v == i for v in y) for i, name in enumerate(CLASS_NAMES)}
    figures = [
        ("Class counts", plot_class_counts(counts, out / "class_counts.png")),
        ("Samples", plot_samples(ev, m["threshold"], out / "samples.png")),
        ("Training curves", plot_curves(meta.get("history", []), out / "training_curves.png")),
        ("Confusion matrix", plot_confusion(m["confusion_matrix"], out / "confusion_matrix.png")),
        ("ROC curve", plot_roc(y, ev.probabilities, out / "roc_curve.png")),
        ("Calibration", plot_calibration(y, ev.probabilities, out / "calibration.png", m.get("ece"))),
        ("Decision curve", plot_decision_curve(y, ev.probabilities, m["threshold"], out / "decision_curve.png")),
        (
            "Risk and coverage",
            plot_risk_coverage(y, ev.probabilities, m["threshold"], out / "risk_coverage.png", meta.get("borderline")),
        ),
    ]
    pred = [int(p >= m["threshold"]) for p in ev.probabilities]
    cls_report = classification_report(
        y, pred, labels=[0, 1], target_names=list(CLASS_NAMES), digits=3, zero_division=0
    )
    skipped = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>" for s in m["skipped"])
    figs_html = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{caption}</figcaption></figure>'
        for caption, name in figures
        if name
    )
    config = json.dumps(meta.get("config", {}), indent=2, sort_keys=True)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
.notice{{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}}
figure{{display:inline-block;margin:.5em}}img{{max-width:100%}}pre{{background:#f5f5f5;padding:.8em}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="notice">{NOTICE}</p>
<h2>Metrics</h2><pre>{html.escape(format_table(m))}</pre>
<h2>Classification report</h2><pre>{html.escape(cls_report)}</pre>
{figs_html}
{_explanations_html(explanations)}
<h2>Unreadable files ({len(m["skipped"])})</h2><ul>{skipped or "<li>none</li>"}</ul>
<h2>Training configuration</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
