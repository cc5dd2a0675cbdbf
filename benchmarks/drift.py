"""How often ``pneumolens audit --drift`` raises an alert when nothing changed, and how soon it sees a
change, in windows of simulated traffic drawn from real calls of the model.

    python benchmarks/drift.py --data ../shared/data/chest_xray
    python benchmarks/drift.py --model runs/x --data ../shared/data/chest_xray --reps 200

The model's validation films (its ``split.json``, or for a bare model file the split its recorded
config draws from ``--data``) are scored through the public API (lung mask, preprocessing, model,
threshold, flags and the measures behind them), as they are stored and degraded five ways
(``benchmarks/robustness.py``: half and a quarter of the resolution, lighter by a gamma of 0.67,
mirrored, noise of sd 0.05). Each repetition draws a baseline window and a recent window of films
with replacement from those calls, at a stated share of pneumonia films, and runs
``pneumolens.monitoring.drift.compare`` on them, as ``audit --drift`` does on a trail. Per scenario and size
of the recent window: the share of repetitions with an alert (any measure), and the
measure that alerted most often. "No change" gives the false-alarm rate; the others, the detection
rate. Drawing with replacement from 746 films repeats films within a window, which real traffic
does not; the KS test is conservative with such ties.

Only validation is read: this chooses nothing and test is never touched. Not part of the test suite.

    python benchmarks/drift.py --data ../shared/data/chest_xray --against SITE_DIR

instead puts the validation films (the baseline) beside every film of ``SITE_DIR`` (the recent
window), all together and per class folder: what ``audit --drift`` would say if the model moved
from its validation films to that site. This reads ``SITE_DIR`` (with the Kaggle test split as the
site, it reads the test films, to compare their inputs; it chooses nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from robustness import degraded
from tta import val_paths

import pneumolens
from pneumolens.checkpoint import shipped_model_path
from pneumolens.data.images import read_image
from pneumolens.data.sources import image_files
from pneumolens.monitoring.drift import compare, window

DEGRADED = {
    "half": "resolution 1/2",
    "low": "resolution 1/4",
    "light": "gamma 0.67 (lighter)",
    "mirrored": "mirrored",
    "noisy": "noise sd 0.05",
}
# scenario: (share of pneumonia films in the recent window, {pool: share of the recent window's films from it})
SCENARIOS = {
    "no change": (0.25, {}),
    "pneumonia 25% -> 35% of films": (0.35, {}),
    "pneumonia 25% -> 50% of films": (0.50, {}),
    "10% of films at 1/4 resolution": (0.25, {"low": 0.10}),
    "20% of films at 1/2 resolution": (0.25, {"half": 0.20}),
    "30% of films lighter (gamma 0.67)": (0.25, {"light": 0.30}),
    "5% of films mirrored": (0.25, {"mirrored": 0.05}),
    "10% of films noisy (sd 0.05)": (0.25, {"noisy": 0.10}),
}
BASE_PREVALENCE = 0.25


def calls(model: pneumolens.Model, films: list[np.ndarray], threshold: float, batch: int = 32) -> list[dict]:
    """An audit-like row per film: decision, probability, threshold, flags, measures."""
    rows = []
    for i in range(0, len(films), batch):
        for r in model.predict(films[i : i + batch]):
            rows.append(
                {
                    "time": "",
                    "decision": r.label,
                    "probability": r.probability,
                    "threshold": threshold,
                    "flags": json.dumps(r.flags),
                    "measures": json.dumps(r.measures),
                }
            )
    return rows


def draw(pools: dict[str, list[dict]], y: np.ndarray, n: int, prevalence: float, mix: dict, rng) -> list[dict]:
    """``n`` rows: each from a degraded pool with the scenario's share, else from the films as stored;
    a pneumonia film with probability ``prevalence``."""
    sick, healthy = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    names = ["clean", *mix]
    weights = [1 - sum(mix.values()), *mix.values()]
    out = []
    for pool in rng.choice(len(names), size=n, p=weights):
        idx = sick if rng.random() < prevalence else healthy
        out.append(pools[names[pool]][int(rng.choice(idx))])
    return out


def against(model: pneumolens.Model, paths: list, baseline: list[dict], folder: Path, alpha: float) -> None:
    """The drift report of the films of ``folder`` against the validation calls: all films, then per
    class folder (NORMAL, PNEUMONIA) where both sides have one."""
    site = image_files(folder)
    recent = calls(model, [read_image(p) for p in site], model.loaded.threshold)
    for name in (None, "NORMAL", "PNEUMONIA"):
        b = [r for r, p in zip(baseline, paths, strict=True) if name is None or Path(p).parent.name.upper() == name]
        s = [r for r, p in zip(recent, site, strict=True) if name is None or p.parent.name.upper() == name]
        if b and s:
            print(f"\n{name or 'all films'}: {len(b)} validation films against {len(s)} of {folder}")
            print(compare(window(b), window(s), alpha))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ap.add_argument("--data", required=True, help="the dataset root the model was trained on (its validation split)")
    ap.add_argument("--baseline", type=int, default=1000, help="films in the baseline window")
    ap.add_argument("--recent", type=int, nargs="+", default=[100, 300, 1000], help="films in the recent window")
    ap.add_argument("--reps", type=int, default=500, help="repetitions per scenario and size")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--against",
        metavar="DIR",
        help="instead: the validation films as the baseline against every film of DIR (and per class folder)",
    )
    args = ap.parse_args()
    t0 = time.time()
    path = Path(args.model) if args.model else shipped_model_path()
    model = pneumolens.load(path)
    threshold = model.loaded.threshold
    paths = val_paths(path, args.data)
    y = np.array([int("PNEUMONIA" in Path(p).parent.name.upper()) for p in paths])
    films = [read_image(p) for p in paths]
    if args.against:
        against(model, paths, calls(model, films, threshold), Path(args.against), args.alpha)
        print(f"({time.time() - t0:.0f} s)")
        return
    pools = {"clean": calls(model, films, threshold)}
    for key, name in DEGRADED.items():
        pools[key] = calls(model, [degraded(x, name, i) for i, x in enumerate(films)], threshold)
    scored = time.time() - t0
    rng = np.random.default_rng(args.seed)
    print(
        f"model: {path}; {len(paths)} validation films ({int(y.sum())} pneumonia) scored as stored and degraded "
        f"({scored:.0f} s); baseline {args.baseline} films at {BASE_PREVALENCE:.0%} pneumonia; {args.reps} "
        f"repetitions; alpha {args.alpha}"
    )
    head = " | ".join(f"recent {n}" for n in args.recent)
    print(f"| scenario (recent window) | {head} | measure alerting most often |")
    print("|---|" + "---|" * len(args.recent) + "---|")
    for scenario, (prevalence, mix) in SCENARIOS.items():
        rates, which = [], Counter()
        for n in args.recent:
            alerts = 0
            for _ in range(args.reps):
                base = window(draw(pools, y, args.baseline, BASE_PREVALENCE, {}, rng))
                report = compare(base, window(draw(pools, y, n, prevalence, mix, rng)), args.alpha)
                alerts += report.drift
                which.update(t.name for t in report.tests if t.alert)
            rates.append(f"{100 * alerts / args.reps:.1f}%")
        top = ", ".join(f"{k} ({v})" for k, v in which.most_common(2)) or "-"
        print(f"| {scenario} | {' | '.join(rates)} | {top} |")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
