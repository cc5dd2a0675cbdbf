"""Exclusion lists for a learning curve: the training part of a run's split cut to fractions of its
patients (round 15 of docs/results.md).

    python benchmarks/learning_curve.py --split runs/v13/s8/split.json --out runs/v15 [--fractions 0.25 0.5 0.75]

Per class, the training patients are put in one random order (numpy seed ``--seed``); the first
fraction of them is kept, so the parts are nested. Writes ``OUT/exclude_N.txt`` (N = percent) with
every training film of the other patients, for ``pneumolens train --exclude``; validation is never
touched. Prints the films kept per fraction. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import patient_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", type=Path, required=True, help="a run's split.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train = json.loads(args.split.read_text())["train"]
    label = {p: next(c for c in CLASS_NAMES if f"/{c}/" in p) for p in train}
    rng = np.random.default_rng(args.seed)
    orders = []
    for c in CLASS_NAMES:
        patients = sorted({patient_id(p) for p in train if label[p] == c})
        orders.append([(c, q) for q in rng.permutation(patients)])
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.fractions:
        keep = {key for order in orders for key in order[: round(f * len(order))]}
        excluded = [p for p in train if (label[p], patient_id(p)) not in keep]
        path = args.out / f"exclude_{round(100 * f)}.txt"
        header = f"# learning curve: training patients left out ({f:g} kept, seed {args.seed})\n"
        path.write_text(header + "\n".join(excluded) + "\n")
        print(f"{path}: {len(train) - len(excluded)} of {len(train)} training films kept")


if __name__ == "__main__":
    main()
