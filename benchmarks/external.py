"""How a model reads adult films from two other hospitals: the NLM Montgomery and Shenzhen sets.

    python benchmarks/external.py --masks ../shared/data/lung_masks
    python benchmarks/external.py --masks ../shared/data/lung_masks --model runs/x

The sets (``lung_masks/manifest.csv``) hold normal and tuberculosis films of adults, none of them
pneumonia by label and none used to train or to choose anything for the pneumonia model. Per source,
through the Python API as a site would send them: the normal films called pneumonia (the external
check of every quality round), the TB films called pneumonia, the ROC-AUC of the probability for
TB against normal (how far the model's "pneumonia" reaches other lung disease), and the films that
get a flag asking to check the image; then the same by the patient's age band (the manifest's ages,
Shenzhen's only: the bands ``evaluate --group-by age-band`` uses), for how the model reads children of
the training ages against adults from elsewhere. Nothing here chooses anything. Not part of the test
suite.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import pneumolens
from pneumolens.data.images import read_image
from pneumolens.data.subgroups import AGE_BANDS, band_of
from pneumolens.lungs.flags import BORDERLINE_FLAG, check_flags
from pneumolens.monitoring.agreement import wilson


def films(masks: str | Path) -> list[dict[str, str]]:
    """The manifest's rows, each with its image path under ``path``."""
    with open(Path(masks) / "manifest.csv", newline="") as f:
        return [r | {"path": str(Path(masks) / "images" / f"{r['id']}.png")} for r in csv.DictReader(f)]


def band(age: str) -> str:
    """The age band of a manifest's age in years ("no age" when empty)."""
    return band_of(float(age)) if age.strip() else "no age"


def rates(tb: np.ndarray, called: np.ndarray, prob: np.ndarray, flagged: np.ndarray) -> dict[str, float | int]:
    """Counts and shares for one group of films: ``tb`` (1 for a TB film), the pneumonia calls, the
    probabilities and whether a check flag was raised."""
    normal = tb == 0
    out: dict[str, float | int] = {
        "normal": int(normal.sum()),
        "normal_called": int(called[normal].sum()),
        "tb": int((~normal).sum()),
        "tb_called": int(called[~normal].sum()),
        "flagged": int(flagged.sum()),
    }
    out["auc"] = roc_auc_score(tb, prob) if 0 < out["tb"] < len(tb) else float("nan")
    return out


def row(name: str, r: dict[str, float | int], interval: bool = False) -> str:
    """A table row; with ``interval``, the normal films' share with its Wilson 95% interval (few films)."""

    def share(k: int, n: int, ci: bool = False) -> str:
        if not n:
            return "-"
        if ci and (w := wilson(k, n)) is not None:
            return f"{k} of {n} ({100 * k / n:.1f}% [{100 * w['low']:.1f}, {100 * w['high']:.1f}])"
        return f"{k} of {n} ({100 * k / n:.1f}%)"

    auc = "-" if r["auc"] != r["auc"] else f"{r['auc']:.3f}"
    n = int(r["normal"]) + int(r["tb"])
    return (
        f"| {name} | {share(int(r['normal_called']), int(r['normal']), interval)} "
        f"| {share(int(r['tb_called']), int(r['tb']))} | {auc} | {share(int(r['flagged']), n)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--masks", default="../shared/data/lung_masks", help="the NLM lung_masks folder (manifest.csv)")
    ap.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    args = ap.parse_args()
    t0 = time.time()
    model = pneumolens.load(args.model)
    rows = films(args.masks)
    prob, flagged, unsure = [], [], []
    for i in range(0, len(rows), 32):
        for res in model.predict([read_image(r["path"]) for r in rows[i : i + 32]]):
            prob.append(res.probability)
            flagged.append(bool(check_flags(res.flags)))
            unsure.append(BORDERLINE_FLAG in res.flags)
    p, f = np.array(prob), np.array(flagged)
    tb = np.array([int(r["tb_label"]) for r in rows])
    source = np.array([r["source"] for r in rows])
    called = p >= model.loaded.threshold
    print(f"model: {model.name}; threshold {model.loaded.threshold:.3f}; {len(rows)} films from {args.masks}")
    print(
        "| source | normal films called pneumonia | TB films called pneumonia | ROC-AUC, TB against normal "
        "| flagged |\n|---|---|---|---|---|"
    )
    for name in sorted(set(source)):
        k = source == name
        print(row(name, rates(tb[k], called[k], p[k], f[k])))
    print(row("both", rates(tb, called, p, f)))
    bands = np.array([band(r.get("age", "")) for r in rows])
    print(
        "\n| age band | normal films called pneumonia | TB films called pneumonia | ROC-AUC, TB against normal "
        "| flagged |\n|---|---|---|---|---|"
    )
    for name in [b for _, b in AGE_BANDS] + ["65 years or more", "no age"]:
        if (k := bands == name).any():
            print(row(name, rates(tb[k], called[k], p[k], f[k]), interval=True))
    b = np.array(unsure)
    normal_called = called & (tb == 0)
    print(
        f"\nthe borderline caution: on {int(b.sum())} of {len(b)} films; on {int((b & normal_called).sum())} of the "
        f"{int(normal_called.sum())} normal films called pneumonia and {int((b & called & (tb == 1)).sum())} of the "
        f"{int((called & (tb == 1)).sum())} TB films called pneumonia"
    )
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
