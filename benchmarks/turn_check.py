"""Would a check trained to see digital turns (black corners) make a usable flag? Validation only.

    pneumolens train-orientation --transform turn --borders 0.3 --out runs/orientation_turn_v2
    python benchmarks/turn_check.py runs/orientation_turn_v2/turned.safetensors

For thresholds 0.5, 0.7 and 0.9: the share of the check's validation films (the Kaggle validation
films and the NLM ``val`` rows) flagged as stored, the NLM ``test`` rows flagged as stored, and the
validation films caught when turned 5, 10 and 15 degrees with black corners (``robustness.rotate``)
and when tilted 15 degrees with the corners filled from the edge (``robustness.tilt``: no black
corners, unless the film's own edge is black). The 2026-12-06 rule and its outcome are in the
README (Not done yet) and docs/results.md: the flag was not built.
"""

from __future__ import annotations

import argparse

import numpy as np
from robustness import rotate, tilt

from pneumolens.data.images import read_image
from pneumolens.lungs.orientation import OrientationCheck
from pneumolens.lungs.train_orientation import OrientationConfig, film_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", help="a turned.safetensors made by train-orientation --transform turn")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--lung-masks", default="../shared/data/lung_masks")
    args = ap.parse_args()
    check = OrientationCheck.from_file(args.check)
    sets = film_sets(args.data, args.lung_masks, OrientationConfig(transform="turn"))
    rng = np.random.default_rng(0)
    val = [read_image(p) for p in sets["val"]]
    test = [read_image(p) for p in sets["test"]]

    def scores(grays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([check.probabilities(grays[i : i + 64]) for i in range(0, len(grays), 64)])

    rows = {
        f"validation films as stored ({len(val)})": scores(val),
        f"NLM test rows as stored ({len(test)})": scores(test),
        **{f"validation, turned {d} deg, black corners": scores([rotate(d)(g, rng) for g in val]) for d in (5, 10, 15)},
        "validation, tilted 15 deg, corners from the edge": scores([tilt(15)(g, rng) for g in val]),
    }
    print("| films | flagged at 0.5 | at 0.7 | at 0.9 |")
    print("|---|---|---|---|")
    for name, p in rows.items():
        cells = " | ".join(f"{np.mean(p >= t):.1%} ({int(np.sum(p >= t))})" for t in (0.5, 0.7, 0.9))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
