"""How bright are the lungs? Intensity inside the lung fields, by split and subgroup.

    python benchmarks/exposure.py --data ../shared/data/chest_xray --split runs/default/split.json [--model RUN]
        [--parts train val test]

For every film of the training and validation parts (``split.json`` of a default-preset run) and of
the test split, read as the model reads it (grayscale in [0, 1], before CLAHE): the median and the
interquartile range of the pixels inside the shipped lung segmenter's mask, and the median of the
whole film. Printed as the median over the films of each part and subgroup, with the share of
films whose lung median is above 0.5 (greyer lungs than most pneumonia films); for the normal
subgroups also for the films the model calls pneumonia at its threshold and for the others. Dark
lungs (low median) are well aerated or well penetrated; grey lungs are what consolidation, a thick
chest or a soft exposure look like. Then, for the normal films, the share called pneumonia among
those with a lung median above 0.5 and among the others. A diagnostic: it changes nothing and chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from pneumolens.checkpoint import load_model
from pneumolens.data.images import read_image
from pneumolens.data.sources import check_headers, find_split, kaggle_samples
from pneumolens.data.subgroups import GREY_LUNGS, kaggle_subgroup
from pneumolens.inference import predict_samples
from pneumolens.lungs.segment import LungSegmenter


def lung_statistics(gray: np.ndarray, mask: np.ndarray) -> tuple[float, float, float] | None:
    """Median and interquartile range inside the mask, and the film's median; None without lungs."""
    inside = gray[mask > 0]
    if inside.size < 100:
        return None
    q1, med, q3 = np.percentile(inside, [25, 50, 75])
    return float(med), float(q3 - q1), float(np.median(gray))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True, help="split.json of a run (its train and val lists)")
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--parts", nargs="+", choices=["train", "val", "test"], default=["train", "val", "test"])
    args = ap.parse_args()
    lists = json.loads(Path(args.split).read_text())
    parts = {part: kaggle_samples(lists[part]) for part in ("train", "val")}
    parts["test"], _ = check_headers(find_split(args.data, "test"))
    parts = {k: v for k, v in parts.items() if k in args.parts}
    loaded = load_model(args.model)
    segmenter = LungSegmenter.shipped()
    cells: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    calls: dict[tuple[str, str, bool], list[bool]] = defaultdict(list)  # (part, group, grey lungs) -> called
    for part, samples in parts.items():
        probs, _ = predict_samples(loaded.model, samples, loaded.preprocess)
        for s in samples:
            gray = read_image(s.path)
            stats = lung_statistics(gray, segmenter.mask(gray))
            if stats is None or s.path not in probs:
                continue
            group = kaggle_subgroup(s.path, s.label)
            cells[(part, group)].append(stats)
            if s.label == 0:
                called = bool(probs[s.path] >= loaded.threshold)
                cells[(part, f"{group}, called {'pneumonia' if called else 'normal'}")].append(stats)
                calls[(part, group, stats[0] > GREY_LUNGS)].append(called)
    print(f"| part | subgroup | films | lung median | lung IQR | film median | lung median above {GREY_LUNGS} |")
    print("|---|---|---|---|---|---|---|")
    for (part, group), rows in sorted(cells.items(), key=lambda kv: (list(parts).index(kv[0][0]), kv[0][1])):
        if group.endswith("unnamed"):
            continue
        a = np.array(rows)
        print(f"| {part} | {group} | {len(a)} | {np.median(a[:, 0]):.3f} | {np.median(a[:, 1]):.3f} | "
              f"{np.median(a[:, 2]):.3f} | {100 * (a[:, 0] > GREY_LUNGS).mean():.1f}% |")  # fmt: skip
    print("\nNormal films called pneumonia, by lung median")
    print(f"| part | subgroup | lung median above {GREY_LUNGS} | {GREY_LUNGS} or below |")
    print("|---|---|---|---|")
    for part in parts:
        for group in ("NORMAL/IM", "NORMAL/NORMAL2"):
            cell = [calls.get((part, group, grey), []) for grey in (True, False)]
            text = [f"{100 * np.mean(c):.1f}% (of {len(c)})" if c else "-" for c in cell]
            print(f"| {part} | {group} | {text[0]} | {text[1]} |")


if __name__ == "__main__":
    main()
