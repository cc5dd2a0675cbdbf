"""How much of the body is in view? The lung box's place in the film, by split and subgroup.

    python benchmarks/framing.py --data ../shared/data/chest_xray --split runs/default/split.json [--model RUN]

For every film of the training and validation parts (``split.json`` of a default-preset run) and of
the test split: the box of the shipped lung segmenter's mask, grown by the model's crop margin, as
the crop in preprocessing computes it; its height and width as shares of the film, and whether it
reaches the film's top or bottom edge (a tightly framed film: the crop then has no margin there).
For the normal subgroups, the share called pneumonia by the model at its threshold, for boxes that
reach the edge and for those that do not. A diagnostic: it changes nothing and chooses nothing.
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
from pneumolens.data.subgroups import kaggle_subgroup
from pneumolens.inference import predict_samples
from pneumolens.lungs.preprocess import crop_box
from pneumolens.lungs.segment import LungSegmenter


def share(called: np.ndarray, sel: np.ndarray) -> str:
    return f"{100 * called[sel].mean():.1f}% (of {sel.sum()})" if sel.any() else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True, help="split.json of a run (its train and val lists)")
    ap.add_argument("--model", default=None, help="default: the shipped model")
    args = ap.parse_args()
    loaded = load_model(args.model)
    margin = loaded.preprocess.lung_margin
    segmenter = LungSegmenter.shipped()
    split = json.loads(Path(args.split).read_text())
    parts = {
        "train": kaggle_samples(split["train"]),
        "val": kaggle_samples(split["val"]),
        "test": check_headers(find_split(args.data, "test"))[0],
    }
    rows: dict[tuple[str, str], list[tuple[float, float, bool, float]]] = defaultdict(list)
    for part, samples in parts.items():
        probs, _ = predict_samples(loaded.model, samples, loaded.preprocess)
        for s in samples:
            if s.path not in probs:
                continue
            gray = read_image(s.path)
            box = crop_box(segmenter.mask(gray, full_size=False), margin, gray.shape)
            if box is None:
                continue
            top, bottom, left, right = box
            h, w = gray.shape
            edge = top <= 1 or bottom >= h - 1
            rows[(part, kaggle_subgroup(s.path, s.label))].append(
                ((bottom - top) / h, (right - left) / w, edge, probs[s.path])
            )
    print(
        f"Lung box (segmenter mask grown by {margin:g}) in the {args.data} films; model "
        f"{loaded.meta.get('name')} at threshold {loaded.threshold:.3f}"
    )
    print("| part | subgroup | films | box height (median share) | box width | reaches top or bottom edge "
          "| called pneumonia: edge | called pneumonia: no edge |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for part in parts:
        for group in sorted(g for p, g in rows if p == part):
            r = rows[(part, group)]
            height, width = np.median([x[0] for x in r]), np.median([x[1] for x in r])
            edge = np.array([x[2] for x in r])
            called = np.array([x[3] >= loaded.threshold for x in r])

            normal = group.startswith("NORMAL")
            print(
                f"| {part} | {group} | {len(r)} | {100 * height:.0f}% | {100 * width:.0f}% | {100 * edge.mean():.1f}% "
                f"| {share(called, edge) if normal else ''} | {share(called, ~edge) if normal else ''} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
