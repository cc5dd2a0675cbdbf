"""Do fine-tunes gain from more films? Score half-refits on the validation half they did not see.

    python benchmarks/half_refit.py --twin runs/v35/half_a/holdout \
        --half runs/v35/half_a runs/v35/V2.txt --half runs/v35/half_b runs/v35/V1.txt

Each ``--half RUN LIST``: a run trained with ``--refit --exclude LIST`` (so on the training part and
the validation films *not* in LIST), scored on LIST's films. ``--twin``: the run with all validation
held out (the refits' own twin), scored on the same films. Prints, per half and pooled out of fold
(each film scored by the half that did not train on it), ROC-AUC, and specificity both at the
twin's stored threshold and at the threshold that gives 97% sensitivity on those films. Only
validation films are read: test is never touched here. Not part of the test suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import load_model
from pneumolens.data.sources import kaggle_samples
from pneumolens.data.split import read_exclusions
from pneumolens.evaluation.calibration import choose_threshold
from pneumolens.inference import predict_samples


def scores(run: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, calibrated probabilities and the stored threshold of ``run`` on ``paths``."""
    loaded = load_model(run)
    samples = kaggle_samples(paths)
    probs, errors = predict_samples(loaded.model, samples, loaded.preprocess)
    if errors:
        raise SystemExit(f"{run}: unreadable validation films, e.g. {next(iter(errors.items()))}")
    return np.array([s.label for s in samples]), np.array([probs[s.path] for s in samples]), loaded.threshold


def row(name: str, y: np.ndarray, p: np.ndarray, threshold: float) -> str:
    normal = y == 0
    spec_stored = float((p[normal] < threshold).mean())
    t97 = choose_threshold(y, p, "sensitivity:0.97")
    sens_stored = float((p[~normal] >= threshold).mean())
    spec97 = float((p[normal] < t97).mean())
    return (
        f"| {name} | {len(y)} | {roc_auc_score(y, p):.5f} | {threshold:.3f} | {100 * sens_stored:.1f}% "
        f"| {100 * spec_stored:.1f}% | {100 * spec97:.1f}% |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twin", type=Path, required=True)
    ap.add_argument("--half", nargs=2, action="append", metavar=("RUN", "LIST"), required=True)
    args = ap.parse_args()

    print("| model | films | ROC-AUC | stored threshold | sens there | spec there | spec at 97% sens |")
    print("|---|---|---|---|---|---|---|")
    pooled: dict[str, list[np.ndarray]] = {"y": [], "twin": [], "half": []}
    for run, listed in args.half:
        paths = read_exclusions(listed)
        y, p_twin, t_twin = scores(args.twin, paths)
        _, p_half, t_half = scores(Path(run), paths)
        print(row(f"twin on {Path(listed).stem}", y, p_twin, t_twin))
        print(row(f"{Path(run).name} on {Path(listed).stem} (not trained on)", y, p_half, t_half))
        pooled["y"].append(y)
        pooled["twin"].append(p_twin)
        pooled["half"].append(p_half)
    y = np.concatenate(pooled["y"])
    print(row("twin, all listed films", y, np.concatenate(pooled["twin"]), t_twin))
    print(row("halves out of fold, pooled", y, np.concatenate(pooled["half"]), t_half))


if __name__ == "__main__":
    main()
