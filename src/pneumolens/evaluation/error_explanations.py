"""Why was the model wrong? Explanations of its false positives and false negatives, and how much of
each explanation falls on the lungs (the seed's diaphragm-and-sternum finding, as a number)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pneumolens.checkpoint import LoadedModel  # noqa: E402
from pneumolens.data.images import ImageReadError  # noqa: E402
from pneumolens.evaluation.evaluate import Evaluation  # noqa: E402
from pneumolens.explain.explainer import Explanation, explain_image  # noqa: E402
from pneumolens.explain.render import overlay_array  # noqa: E402

log = logging.getLogger(__name__)
MAX_CORRECT_SLOW = 50  # LIME and occlusion explain at most this many correct images (time)


def _kind(label: int, p: float, t: float) -> str:
    pred = int(p >= t)
    return {(0, 0): "tn", (0, 1): "fp", (1, 0): "fn", (1, 1): "tp"}[(label, pred)]


def explain_errors(
    loaded: LoadedModel, ev: Evaluation, method: str, out_png: Path, per_kind: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Explain the errors (and the correct calls, for comparison); draw a grid of FP and FN.

    Returns mean ``lung_fraction`` per outcome (tp, tn, fp, fn) and for correct vs wrong.
    """
    t = ev.metrics["threshold"]
    kinds = [_kind(s.label, p, t) for s, p in zip(ev.samples, ev.probabilities, strict=True)]
    idx = list(range(len(kinds)))
    wrong = [i for i in idx if kinds[i] in ("fp", "fn")]
    right = [i for i in idx if kinds[i] in ("tp", "tn")]
    if method != "gradcam" and len(right) > MAX_CORRECT_SLOW:
        right = sorted(np.random.default_rng(seed).choice(right, MAX_CORRECT_SLOW, replace=False).tolist())
    fractions: dict[str, list[float]] = {"tp": [], "tn": [], "fp": [], "fn": []}
    shown: dict[str, list[Explanation]] = {"fp": [], "fn": []}
    for i in wrong + right:
        try:
            e = explain_image(loaded, ev.samples[i].path, method, seed=seed)
        except ImageReadError as err:  # scored a moment ago, so only a file changed since can fail
            log.warning("skipped %s", err)
            continue
        if e.lung_fraction is not None:
            fractions[kinds[i]].append(e.lung_fraction)
        if kinds[i] in shown and len(shown[kinds[i]]) < per_kind:
            shown[kinds[i]].append(e)
    _grid(shown, method, out_png)

    def mean(v: list[float]) -> float | None:
        return float(np.mean(v)) if v else None

    return {
        "method": method,
        "lung_fraction": {
            "correct": mean(fractions["tp"] + fractions["tn"]),
            "wrong": mean(fractions["fp"] + fractions["fn"]),
            **{k: mean(v) for k, v in fractions.items()},
        },
        "n": {k: len(v) for k, v in fractions.items()},
    }


def _grid(shown: dict[str, list[Explanation]], method: str, path: Path) -> None:
    titles = {"fp": "False positives: NORMAL called PNEUMONIA", "fn": "False negatives: PNEUMONIA missed"}
    fig = plt.figure(figsize=(10, 11), layout="constrained")
    for sub, kind in zip(fig.subfigures(2, 1), ("fp", "fn"), strict=True):
        sub.suptitle(f"{titles[kind]} ({method}; warm = supports the model's call)", fontsize=11)
        axes = sub.subplots(2, 4)
        for ax, e in zip(axes.ravel(), shown[kind] + [None] * 8, strict=False):
            ax.axis("off")
            if e is None:
                continue
            ax.imshow(overlay_array(e))
            lung = "n/a" if e.lung_fraction is None else f"{e.lung_fraction:.2f}"
            ax.set_title(f"P(pneumonia)={e.probability:.2f}, in lungs {lung}", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
