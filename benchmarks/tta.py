"""Does test-time augmentation or a small ensemble pay off on *validation*? (quality issue, item 3)

    python benchmarks/tta.py runs/v2/default [runs/v2/ema ...]
    python benchmarks/tta.py src/pneumolens/assets/default.safetensors --data ../shared/data/chest_xray

For each run: the validation split it was trained with (its ``split.json``; for a model file, the
split its recorded config draws from ``--data``), scored plain and with TTA
(the mean logit over a fixed set of small affine views, the kind training augments with). With
several runs that share a validation split, also their ensemble (mean logit; each model with
its own preprocessing). Prints ROC-AUC
and, at the threshold each way would choose for 97% sensitivity, specificity. Only validation is
read: test is never touched here. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import load_model
from pneumolens.config import TrainConfig
from pneumolens.data.images import preprocess, read_image
from pneumolens.evaluation.calibration import choose_threshold
from pneumolens.training.fit import training_split

# (rotation degrees, zoom, shift x, shift y): identity plus six mild views
VIEWS = [
    (0, 1.0, 0, 0),
    (5, 1.0, 0, 0),
    (-5, 1.0, 0, 0),
    (0, 0.93, 0, 0),
    (0, 1.07, 0, 0),
    (0, 1.0, 0.04, 0),
    (0, 1.0, -0.04, 0),
]


def views(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (V, B, C, H, W), the fixed affine views of every image."""
    out = []
    for deg, zoom, tx, ty in VIEWS:
        a = math.radians(deg)
        theta = torch.tensor(
            [[zoom * math.cos(a), -zoom * math.sin(a), 2 * tx], [zoom * math.sin(a), zoom * math.cos(a), 2 * ty]]
        )
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, padding_mode="border", align_corners=False))
    return torch.stack(out)


@torch.inference_mode()
def logits(run: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_model(run)
    x = torch.from_numpy(np.stack([preprocess(read_image(p), loaded.preprocess) for p in paths]))
    plain, tta = [], []
    for i in range(0, len(x), 64):
        b = x[i : i + 64]
        plain.append(loaded.model(b))
        v = views(b)
        tta.append(loaded.model(v.flatten(0, 1)).view(len(VIEWS), len(b)).mean(0))
    return torch.cat(plain).numpy(), torch.cat(tta).numpy()


def val_paths(run: Path, data: str) -> list[str]:
    """The validation films ``run`` was trained with: its ``split.json``, or for a bare model file the
    patient split its recorded training config draws from ``data``."""
    if (run / "split.json").is_file():
        return json.loads((run / "split.json").read_text())["val"]
    cfg = TrainConfig.from_dict(load_model(run).meta["config"])
    return [s.path for s in training_split(data, cfg)[0].val]


def row(name: str, y: np.ndarray, z: np.ndarray) -> str:
    p = 1 / (1 + np.exp(-z))
    t = choose_threshold(y, p, "sensitivity:0.97")
    pred = p >= t
    spec = float(((~pred) & (y == 0)).sum() / (y == 0).sum())
    sens = float((pred & (y == 1)).sum() / (y == 1).sum())
    acc = float((pred == y).mean())
    return f"| {name} | {roc_auc_score(y, p):.4f} | {100 * acc:.1f}% | {100 * sens:.1f}% | {100 * spec:.1f}% |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", default="../shared/data/chest_xray", help="for model files without a split.json")
    args = ap.parse_args()
    paths = val_paths(args.runs[0], args.data)
    y = np.array([int("/PNEUMONIA/" in p) for p in paths])
    print(f"| validation (n={len(y)}) | ROC-AUC | acc | sens | spec (threshold for 97% sens) |")
    print("|---|---|---|---|---|")
    ens_plain, ens_tta = [], []
    for run in args.runs:
        if val_paths(run, args.data) != paths:
            raise SystemExit(f"{run} was validated on another split")
        zp, zt = logits(run, paths)
        ens_plain.append(zp)
        ens_tta.append(zt)
        print(row(f"{run.name}", y, zp))
        print(row(f"{run.name} + TTA ({len(VIEWS)} views)", y, zt))
    if len(args.runs) > 1:
        print(row("ensemble (mean logit)", y, np.mean(ens_plain, 0)))
        print(row("ensemble + TTA", y, np.mean(ens_tta, 0)))


if __name__ == "__main__":
    main()
