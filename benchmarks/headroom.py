"""How far could the operating point alone take a model on a labelled split? A diagnostic.

    python benchmarks/headroom.py [--model RUN] --data ../shared/data/chest_xray

Scores the split's test images once and prints, from its ROC curve, the best specificity at a
few sensitivities and the best accuracy over all thresholds, as if the threshold had been chosen
on these images. That is never how a threshold is chosen here (validation only): the numbers
bound what any operating point of this model could reach, so they say whether a miss of the
quality targets is the threshold's or the ranking's. Chooses nothing. Not part of the test suite.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_curve

from pneumolens.checkpoint import load_model
from pneumolens.evaluation.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a run or model file (default: the shipped model)")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    loaded = load_model(args.model)
    ev = evaluate(loaded, args.data, n_boot=10)
    y, p = np.array([s.label for s in ev.samples]), np.array(ev.probabilities)
    fpr, tpr, thr = roc_curve(y, p)
    print(f"model: {loaded.meta.get('name')}, {len(y)} images, stored threshold {loaded.threshold:.3f}")
    m = {k: 100 * ev.metrics[k] for k in ("accuracy", "sensitivity", "specificity")}
    print("at the stored threshold: accuracy {accuracy:.1f}%, sensitivity {sensitivity:.1f}%, "
          "specificity {specificity:.1f}%\n".format(**m))  # fmt: skip
    print("| sensitivity at least | best specificity | at threshold |")
    print("|---|---|---|")
    for s in (0.99, 0.98, 0.97, 0.95, 0.90):
        i = int(np.argmax(tpr >= s))
        print(f"| {100 * s:.0f}% | {100 * (1 - fpr[i]):.1f}% | {thr[i]:.3f} |")
    best = max(((p >= t) == y).mean() for t in np.unique(p))
    negatives = np.sort(p[y == 0])[::-1]
    print(f"\nbest accuracy over all thresholds: {100 * best:.1f}%")
    print(f"normal images scored above 0.8: {(negatives > 0.8).sum()} of {len(negatives)}")


if __name__ == "__main__":
    main()
