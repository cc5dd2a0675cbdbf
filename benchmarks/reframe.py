"""Does the model read how tightly a film is framed? A counterfactual on the validation films.

    python benchmarks/reframe.py --split runs/default/split.json [--model RUN] [--fill 0.92]

Each validation film is scored as it is and re-framed: its rows are cut, around the lungs (the
shipped segmenter's mask), until the lungs fill ``--fill`` of the height (the test split's normal
films: 92-93%, ``benchmarks/framing.py``), and the cut film is stretched back to its size, as the
dataset's own resize did. Films already that tight are left as they are. If the model's calls on the
normal films change, it reads the framing. Prints the share called pneumonia at the model's
threshold and the ROC-AUC, both ways. Validation only: no test film is read. A diagnostic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumolens.checkpoint import load_model
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.sources import kaggle_samples
from pneumolens.data.subgroups import kaggle_subgroup
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.lungs.segment import LungSegmenter


def reframed(gray: np.ndarray, lungs: np.ndarray, fill: float) -> np.ndarray | None:
    """``gray`` cut to rows around the lungs so they fill ``fill`` of the height, stretched back to
    its shape; None when the film is already as tight (or has no lungs)."""
    rows = np.flatnonzero(lungs.any(axis=1))
    if not rows.size:
        return None
    h = gray.shape[0]
    extent = rows[-1] + 1 - rows[0]
    keep = int(round(extent / fill))
    if keep >= h:
        return None
    centre = (rows[0] + rows[-1] + 1) / 2
    top = int(round(min(max(centre - keep / 2, 0), h - keep)))
    cut = Image.fromarray(np.ascontiguousarray(gray[top : top + keep], dtype=np.float32), mode="F")
    return np.asarray(cut.resize((gray.shape[1], h), Image.Resampling.BILINEAR), dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", required=True, help="split.json of a default-preset run (its val list)")
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--fill", type=float, default=0.92)
    args = ap.parse_args()
    loaded = load_model(args.model)
    segmenter = LungSegmenter.shipped()
    films = kaggle_samples(json.loads(Path(args.split).read_text())["val"])
    labels, groups, changed = [], [], []
    before: list[np.ndarray] = []
    after: list[np.ndarray] = []
    for film in films:
        p, label = film.path, film.label
        gray = read_image(p)
        new = reframed(gray, segmenter.mask(gray), args.fill)
        labels.append(label)
        groups.append(kaggle_subgroup(p, label))
        changed.append(new is not None)
        before.append(preprocess(gray, loaded.preprocess))
        after.append(preprocess(gray if new is None else new, loaded.preprocess))
    model = loaded.model.eval()
    with torch.inference_mode():
        score = {
            name: torch.sigmoid(model(torch.from_numpy(np.stack(x)))).float().numpy()
            for name, x in (("as framed", before), (f"re-framed to {args.fill:g}", after))
        }
    y, g, c = np.array(labels), np.array(groups), np.array(changed)
    t = loaded.threshold
    print(f"{len(y)} validation films of {args.split}; model {loaded.meta.get('name')} at threshold {t:.3f}")
    print(
        "| films | re-framed | called pneumonia as framed | called pneumonia re-framed "
        "| mean score as framed | re-framed |"
    )
    print("|---|---|---|---|---|---|")
    for name in sorted(set(groups)):
        sel = g == name
        a, b = (s[sel] for s in score.values())
        print(
            f"| {name} ({sel.sum()}) | {c[sel].sum()} | {100 * np.mean(a >= t):.1f}% | {100 * np.mean(b >= t):.1f}% "
            f"| {a.mean():.3f} | {b.mean():.3f} |"
        )
    for name, s in score.items():
        m = binary_metrics(y, s, t)
        print(f"{name}: ROC-AUC {m['roc_auc']:.4f}, sensitivity {100 * m['sensitivity']:.1f}%, "
              f"specificity {100 * m['specificity']:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
