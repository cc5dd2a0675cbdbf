"""What does recalibrating at a site buy, and on how many films? (``pneumolens calibrate``)

    python benchmarks/site_calibration.py --data ../shared/data/chest_xray [--model RUN] [--sizes 60 100 200 300]

The labelled films (``DATA/test``, class folders or a CSV manifest) stand for a site whose films
differ from the training hospital's. Their patients are halved at random many times; each time the
operating point is refitted (temperature and threshold, as ``calibrate`` does) on N films of
patients from half A and scored on all of half B, beside the model's own operating point. The
table gives the means over halvings, and how often half B's sensitivity fell below the policy's
target, refitting as measured and at ``--confidence`` (the rate's one-sided lower bound, see
``calibrate --confidence``). A diagnostic of the procedure: it changes no model and chooses nothing. Not part of the
test suite.
"""

from __future__ import annotations

import argparse

import numpy as np

from pneumolens.checkpoint import load_model
from pneumolens.data.sources import check_headers, find_split, patient_id
from pneumolens.evaluation.calibration import parse_policy
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.recalibrate import refit
from pneumolens.inference import predict_samples


def rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float, float]:
    m = binary_metrics(y, p, t)
    return m["sensitivity"], m["specificity"], m["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ap.add_argument("--policy", default=None, help="default: the model's own")
    ap.add_argument("--sizes", type=int, nargs="+", default=[60, 100, 200, 300], help="films to recalibrate on")
    ap.add_argument("--confidence", type=float, default=0.95, help="also refit at this confidence (0: not)")
    ap.add_argument("--halvings", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    loaded = load_model(args.model)
    policy = args.policy or loaded.meta.get("calibration", {}).get("threshold_policy", "sensitivity:0.97")
    kind, target = parse_policy(policy)
    samples, _ = check_headers(find_split(args.data, "test"))
    logits, _ = predict_samples(loaded.model, samples, loaded.preprocess, logits=True)
    samples = [s for s in samples if s.path in logits]
    y = np.array([s.label for s in samples])
    z = np.array([logits[s.path] for s in samples])
    pat = np.array([patient_id(s.path) for s in samples])
    patients = np.unique(pat)
    rng = np.random.default_rng(args.seed)
    own = "the model's own operating point"
    ways = [(n, None) for n in args.sizes] + [(n, args.confidence) for n in args.sizes if args.confidence]
    label = {w: f"refitted on {w[0]} films of half A" + (f", {w[1]:g} confidence" if w[1] else "") for w in ways}
    rows: dict[str, list[tuple[float, ...]]] = {own: [], **{label[w]: [] for w in ways}}
    impossible = dict.fromkeys(ways, 0)
    done = 0
    while done < args.halvings:
        order = rng.permutation(patients)
        a_patients = order[: len(order) // 2]
        b = ~np.isin(pat, a_patients)
        a_films = np.concatenate([np.flatnonzero(pat == q) for q in a_patients])  # patient by patient
        if any(len(set(y[a_films[:n]])) < 2 for n in args.sizes) or len(set(y[b])) < 2:
            continue
        done += 1
        rows[own].append((loaded.threshold, *rates(y[b], 1 / (1 + np.exp(-z[b])), loaded.threshold)))
        for n, conf in ways:
            idx = a_films[:n]
            try:
                t, thr = refit(y[idx], z[idx], policy, confidence=conf)
            except ValueError:  # too few films of the class to show the rate at that confidence
                impossible[(n, conf)] += 1
                continue
            rows[label[(n, conf)]].append((thr, *rates(y[b], 1 / (1 + np.exp(-z[b] / t)), thr)))
    short = "sensitivity" if kind == "sensitivity" else "specificity"
    print(
        f"{loaded.meta.get('name')} on {args.data}: {len(y)} films, {len(patients)} patients; policy {policy};"
        f" {args.halvings} halvings (seed {args.seed}); means on half B"
    )
    goal = f"{short} below {target:.0%} on B" if target is not None else "-"
    print(f"| operating point | threshold | sensitivity | specificity | accuracy | {goal} |")
    print("|---|---|---|---|---|---|")
    col = 1 if kind == "sensitivity" else 2  # of (threshold, sensitivity, specificity, accuracy)
    for name, r in rows.items():
        if not r:
            print(f"| {name} | not possible in any halving (too few films of the class) | | | | |")
            continue
        a = np.array(r)
        below = 100 * np.mean(a[:, col] < target) if target is not None else float("nan")
        print(
            f"| {name} | {a[:, 0].mean():.3f} | {100 * a[:, 1].mean():.1f}% | {100 * a[:, 2].mean():.1f}% "
            f"| {100 * a[:, 3].mean():.1f}% | {below:.0f}% of halvings |"
        )
    for w, k in impossible.items():
        if 0 < k < args.halvings:
            print(f"{label[w]}: not possible in {k} halvings (too few films of the class), left out of its row")


if __name__ == "__main__":
    main()
