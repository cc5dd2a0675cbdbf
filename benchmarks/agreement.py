"""How often ``pneumolens audit --agreement --min-sensitivity F --min-specificity F`` raises an alert
when the model is as validated, and how soon it sees a model that has lost sensitivity or
specificity, over simulated months of reviewed films drawn from real calls of the model.

    python benchmarks/agreement.py --data ../shared/data/chest_xray
    python benchmarks/agreement.py --data ../shared/data/chest_xray --reviewed 100 300 --reps 500

The model's validation films are scored through the public API (``pneumolens.load``). Each
repetition draws ``n`` reviewed films with replacement, a share ``--prevalence`` of them pneumonia
films, takes each film's label as the reader's read and the model's call as it is, or with calls
turned to simulate a model that lost sensitivity (a share of its pneumonia calls on pneumonia films
turned NORMAL, so that its expected sensitivity is the scenario's) or specificity (normal calls on
normal films turned PNEUMONIA); then pairs them (``pneumolens.monitoring.agreement.summary``) and checks the
floors as ``audit --agreement`` does (``check_floors``: the upper end of a Wilson 95% interval
under its floor, for a rate with at least 10 reads). Per scenario and number of reviewed films: the
share of repetitions that alert, and the mean width of the sensitivity's interval. The reads are
taken to be right, and drawing with replacement from 746 films repeats films; a real site's reads
disagree with each other too.

Only validation is read: this chooses nothing and test is never touched. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tta import val_paths

import pneumolens
from pneumolens.checkpoint import shipped_model_path
from pneumolens.monitoring.agreement import Pair, check_floors, summary

# scenario: (expected sensitivity, expected specificity); None keeps the model's own
SCENARIOS = {
    "as validated": (None, None),
    "sensitivity down to 90%": (0.90, None),
    "sensitivity down to 85%": (0.85, None),
    "sensitivity down to 80%": (0.80, None),
    "specificity down to 85%": (None, 0.85),
    "specificity down to 75%": (None, 0.75),
}


def simulate(y, called, n, prevalence, sens, spec, floors, rng) -> tuple[bool, float]:
    """One month: whether it alerts, and the width of its sensitivity interval (nan without reads of
    pneumonia)."""
    sick, healthy = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    base_sens, base_spec = called[sick].mean(), 1 - called[healthy].mean()
    ill = rng.random(n) < prevalence
    call = called[np.where(ill, rng.choice(sick, n), rng.choice(healthy, n))]
    if sens is not None:  # pneumonias the degraded model misses
        call = call & ~(ill & (rng.random(n) > sens / base_sens))
    if spec is not None:  # normal films the degraded model calls pneumonia
        call = call | (~ill & (rng.random(n) > spec / base_spec))
    word = np.array(["NORMAL", "PNEUMONIA"])
    pairs = [Pair(c, r, "m") for c, r in zip(word[call.astype(int)], word[ill.astype(int)], strict=True)]
    row = {"model": "m", **summary(pairs)}
    width = row["sensitivity"]["high"] - row["sensitivity"]["low"] if row["sensitivity"] else float("nan")
    return bool(check_floors([row], floors)[0]), width


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ap.add_argument("--data", required=True, help="the dataset root the model was trained on (its validation split)")
    ap.add_argument("--reviewed", type=int, nargs="+", default=[50, 100, 300, 1000], help="films reviewed a month")
    ap.add_argument("--prevalence", type=float, default=0.25, help="share of pneumonia films among those reviewed")
    ap.add_argument("--min-sensitivity", type=float, default=0.90)
    ap.add_argument("--min-specificity", type=float, default=0.85)
    ap.add_argument("--reps", type=int, default=1000, help="repetitions per scenario and size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    path = Path(args.model) if args.model else shipped_model_path()
    model = pneumolens.load(path)
    paths = val_paths(path, args.data)
    y = np.array([int("PNEUMONIA" in Path(p).parent.name.upper()) for p in paths])
    called = np.array([r.label == "PNEUMONIA" for r in model.predict(list(paths))])
    sens, spec = called[y == 1].mean(), 1 - called[y == 0].mean()
    floors = {"sensitivity": args.min_sensitivity, "specificity": args.min_specificity}
    print(
        f"{len(y)} validation films ({int(y.sum())} pneumonia): the model's sensitivity {100 * sens:.1f}%, "
        f"specificity {100 * spec:.1f}% at its operating point; floors {100 * args.min_sensitivity:g}% and "
        f"{100 * args.min_specificity:g}%, {100 * args.prevalence:g}% pneumonia among the reviewed films, "
        f"{args.reps} repetitions"
    )
    sizes = " | ".join(f"{n} reviewed" for n in args.reviewed)
    print(f"| scenario | {sizes} |")
    print("|---" * (len(args.reviewed) + 1) + "|")
    rng = np.random.default_rng(args.seed)
    widths: dict[int, list[float]] = {n: [] for n in args.reviewed}
    for name, (s, p) in SCENARIOS.items():
        cells = []
        for n in args.reviewed:
            runs = [simulate(y, called, n, args.prevalence, s, p, floors, rng) for _ in range(args.reps)]
            cells.append(f"{100 * np.mean([alert for alert, _ in runs]):.1f}%")
            if name == "as validated":
                widths[n] = [w for _, w in runs]
        print(f"| {name} | {' | '.join(cells)} |")
    print(
        "| width of the sensitivity's 95% interval, as validated (mean) | "
        + " | ".join(f"{100 * np.nanmean(widths[n]):.1f} points" for n in args.reviewed)
        + " |"
    )
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
