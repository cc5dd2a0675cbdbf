"""What does retraining a recipe give? Compare draws (training seeds) of recipes. A diagnostic.

    python benchmarks/draws.py --external ../shared/data/lung_masks \
        --group "lung gamma" runs/v19/gamma_s8 runs/v19/gamma_s9 ... \
        --group "shipped recipe" runs/v13/s8 runs/v13/s9 ...

Each run is a finished `pneumolens train` output holding `val_metrics.json` and the
`test_metrics.json` of its one `pneumolens evaluate --json`. With --external (the lung_masks
folder), the share of its normal films each run calls pneumonia is measured once and kept in
RUN/external.json. Prints, per group, the mean (standard deviation; range) of each figure and,
for two groups, the Mann-Whitney p over draws: how a recipe's retrains spread, which a single
draw (the shipped model is the best validated of eleven) cannot show. Chooses nothing; only
draws that were never selected belong in a group. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablation import external_fpr  # same folder
from scipy.stats import mannwhitneyu

from pneumolens.checkpoint import atomic_write

FIGURES = {  # name -> (file, key, scale, format)
    "validation ROC-AUC": ("val_metrics.json", "roc_auc", 1, "{:.4f}"),
    "test accuracy": ("test_metrics.json", "accuracy", 100, "{:.1f}%"),
    "test sensitivity": ("test_metrics.json", "sensitivity", 100, "{:.1f}%"),
    "test specificity": ("test_metrics.json", "specificity", 100, "{:.1f}%"),
    "test ROC-AUC": ("test_metrics.json", "roc_auc", 1, "{:.4f}"),
    "external normals called pneumonia": ("external.json", "rate", 100, "{:.1f}%"),
}


def external_rate(run: Path, folder: str) -> None:
    """Measure the run's external false-positive share once; keep it in RUN/external.json."""
    path = run / "external.json"
    if path.exists():
        return
    text = json.dumps({"rate": float(external_fpr(run, folder)) / 100, "folder": str(folder)}) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def figures(run: Path) -> dict[str, float]:
    """The run's figures that its files hold, scaled for printing."""
    out = {}
    for name, (file, key, scale, _) in FIGURES.items():
        path = run / file
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if value is not None:
                out[name] = scale * float(value)
    if "validation ROC-AUC" not in out:
        raise SystemExit(f"{run}: no val_metrics.json with roc_auc (is this a finished training run?)")
    return out


def summarise(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation (0 for one draw), minimum, maximum."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, float(a.min()), float(a.max())


def table(groups: dict[str, list[dict[str, float]]]) -> str:
    names = list(groups)
    head = "| | " + " | ".join(f"{g}, {len(groups[g])} draws" for g in names) + (" | p |" if len(names) == 2 else " |")
    lines = [head, "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for fig, (*_, fmt) in FIGURES.items():
        cols = [[r[fig] for r in groups[g] if fig in r] for g in names]
        if not all(cols):
            continue
        cells = []
        for c in cols:
            mean, sd, lo, hi = summarise(c)
            cells.append(f"{fmt.format(mean)} ({fmt.format(sd).rstrip('%')}; {fmt.format(lo)}-{fmt.format(hi)})")
        p = f" | {mannwhitneyu(cols[0], cols[1]).pvalue:.3f}" if len(names) == 2 else ""
        lines.append(f"| {fig} | " + " | ".join(cells) + p + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                    help="a group's name, then its run directories")  # fmt: skip
    ap.add_argument("--external", help="lung_masks folder: also measure its normal films called pneumonia")
    args = ap.parse_args()
    groups: dict[str, list[dict[str, float]]] = {}
    for name, *runs in args.group:
        if not runs:
            raise SystemExit(f"--group {name!r}: no run directories")
        paths = [Path(r) for r in runs]
        for run in paths if args.external else []:
            external_rate(run, args.external)
        groups[name] = [figures(run) for run in paths]
    print(table(groups))


if __name__ == "__main__":
    main()
