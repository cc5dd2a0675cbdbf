"""Does the age check (``pneumolens train-age-check``) see the age, or the hospital?

    python benchmarks/age_check.py runs/age_check/looks_adult.safetensors

Reads, at the check's own threshold: its validation films (the Kaggle validation children, the
Shenzhen validation adults), then the films it never saw: the Shenzhen adults of the NLM ``test``
rows, every Shenzhen child (aged 1-5, the training ages, and 6-17), the Montgomery films (no age
given), the Kaggle test split (children) and the full-resolution Kaggle originals. A check that learnt
the hospital flags the Shenzhen children like the Shenzhen adults; one that learnt the age flags them
like the Kaggle children. Share flagged with a Wilson 95% interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pneumolens.data.images import read_image
from pneumolens.data.sources import find_split
from pneumolens.lungs.age_check import AgeCheck
from pneumolens.lungs.train_age_check import AgeCheckConfig, film_sets, held_out
from pneumolens.monitoring.agreement import wilson


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", help="a looks_adult.safetensors made by train-age-check")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--lung-masks", default="../shared/data/lung_masks")
    ap.add_argument("--fullres", default="../shared/data/fullres_samples")
    args = ap.parse_args()
    t0 = time.time()
    check = AgeCheck.from_file(args.check)
    val = film_sets(args.data, args.lung_masks, AgeCheckConfig())["val"]
    groups: dict[str, list[Path]] = {
        "validation: Kaggle children": [p for p, y in val if y == 0],
        "validation: Shenzhen adults": [p for p, y in val if y == 1],
        **{f"held out: {name}": paths for name, paths in held_out(args.lung_masks).items()},
        "held out: Kaggle test split (children)": [Path(s.path) for s in find_split(args.data, "test")],
        "held out: Kaggle full-resolution originals": sorted(p for p in Path(args.fullres).rglob("*.jp*g")),
    }
    print(f"threshold {check.threshold:.4f} (set on the validation children)\n")
    scores = {
        name: np.concatenate(
            [check.probabilities([read_image(q) for q in paths[i : i + 64]]) for i in range(0, len(paths), 64)]
        )
        for name, paths in groups.items()
    }
    print(flag_table(scores, check.threshold, "median probability"))
    print(f"\n{time.time() - t0:.0f} s")


def flag_table(scores: dict[str, np.ndarray], threshold: float, median: str) -> str:
    """A Markdown table: per group of films, how many score at or above ``threshold``, the share with
    its Wilson 95% interval, and the median score (the column named ``median``)."""
    lines = [f"| films | n | flagged | share [95% interval] | {median} |", "|---|---|---|---|---|"]
    for name, s in scores.items():
        w = wilson(int(np.sum(s >= threshold)), len(s))
        assert w is not None, name
        share = f"{w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}]"
        lines.append(f"| {name} | {w['n']} | {w['k']} | {share} | {np.median(s):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
