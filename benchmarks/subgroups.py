"""Each run's rates by subgroup, on its own training and validation parts and on test.

    python benchmarks/subgroups.py --data ../shared/data/chest_xray RUN [RUN ...] [--parts train val test]

RUN is a run directory (its ``split.json`` names its training and validation films) or ``default``
(the shipped model, whose films are those of any default-preset run with the same split: pass
``--val-from RUN``). The subgroups are ``evaluate``'s (``pneumolens.data.subgroups``): specificity of
the normal series, sensitivity of the pneumonia kinds, at each model's own threshold; then each
subgroup's mean cross-entropy (of the model's probability for the film's true class). Points only;
``pneumolens evaluate`` gives the intervals. ``--parts`` (default: val test) picks the columns; the
training part takes about a minute and a half per model here. A diagnostic: it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumolens.checkpoint import load_model
from pneumolens.data.sources import Sample, check_headers, find_split, kaggle_samples
from pneumolens.data.subgroups import subgroup
from pneumolens.evaluation.evaluate import subgroup_metrics
from pneumolens.inference import predict_samples


def by_subgroup(loaded, samples: list[Sample]) -> dict[str, tuple[float | None, float]]:
    """Per subgroup: its rate at the model's threshold and its mean cross-entropy."""
    probs, _ = predict_samples(loaded.model, samples, loaded.preprocess)
    scored = [s for s in samples if s.path in probs]
    y = np.array([s.label for s in scored])
    p = np.array([probs[s.path] for s in scored])
    groups = [subgroup(s.path, s.label, s.group) for s in scored]
    m = subgroup_metrics(y, p, loaded.threshold, [s.patient for s in scored], groups, n_boot=0)
    own = np.clip(np.where(y == 1, p, 1 - p), 1e-7, 1.0)  # the probability of the true class
    g = np.array(groups)
    return {k: (v["value"], float(-np.log(own[g == k]).mean())) for k, v in m.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument(
        "--val-from", help="run directory whose split.json gives the shipped model's training and validation films"
    )
    ap.add_argument("--parts", nargs="+", choices=["train", "val", "test"], default=["val", "test"])
    ap.add_argument("runs", nargs="*", default=["default"])
    args = ap.parse_args()
    test, _ = check_headers(find_split(args.data, "test"))
    rows = []
    for run in args.runs:
        split = (Path(args.val_from) if run == "default" and args.val_from else Path(run)) / "split.json"
        loaded = load_model(None if run == "default" else run)
        lists = json.loads(split.read_text()) if split.is_file() else {}
        cells: dict[str, dict[str, tuple[float | None, float]]] = {}
        for part in args.parts:
            if part == "test":
                cells[part] = by_subgroup(loaded, test)
            elif part in lists:
                cells[part] = by_subgroup(loaded, kaggle_samples(lists[part]))
        rows.append((run, cells))
    groups = sorted({g for _, c in rows for d in c.values() for g in d}, key=lambda g: (not g.startswith("NORMAL"), g))
    head = [f"{part} {g}" for part in args.parts for g in groups]
    for title, i, fmt in (
        ("rate (normal subgroups: specificity; pneumonia subgroups: sensitivity; at each model's threshold)", 0,
         lambda v: f"{100 * v:.1f}%"),
        ("mean cross-entropy of the true class's probability", 1, lambda v: f"{v:.3f}"),
    ):  # fmt: skip
        print(title)
        print("| run | " + " | ".join(head) + " |")
        print("|---" * (len(head) + 1) + "|")
        for run, c in rows:
            vals = [c.get(part, {}).get(g) for part in args.parts for g in groups]
            print(f"| {run} | " + " | ".join("-" if v is None or v[i] is None else fmt(v[i]) for v in vals) + " |")


if __name__ == "__main__":
    main()
