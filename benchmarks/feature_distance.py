"""Is a film unlike the films the model learnt from? A Mahalanobis distance on the model's own features.

    python benchmarks/feature_distance.py [--model MODEL]

The score (Lee et al. 2018): the distance of a film's pooled features (what the model's last layer
reads) to the nearer class mean of the model's training films, with one covariance for both classes
shrunk by Ledoit-Wolf. Fitted on the training part of the model's own patient split, thresholded at
the 99th percentile of its validation films; then the share of each group of films at or above it,
with a Wilson interval: the Kaggle test split (and, among its films, the model's errors), the
full-resolution originals, and the NLM adult and child films of two other hospitals. The rule this
was judged by is in docs/results.md (thirty-seventh session). Nothing here chooses anything for the
model.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from age_check import flag_table
from sklearn.covariance import LedoitWolf

from pneumolens.checkpoint import load_model
from pneumolens.config import TrainConfig
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.sources import find_split
from pneumolens.training.fit import training_split


@torch.inference_mode()
def features(loaded, paths: list, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features (N, C), probabilities (N,)) of the films at ``paths``, as the model reads them."""
    feats, probs = [], []
    model = loaded.model
    for i in range(0, len(paths), batch):
        x = torch.from_numpy(np.stack([preprocess(read_image(p), loaded.preprocess) for p in paths[i : i + batch]]))
        f = model.pool(model.forward_features(x)).flatten(1)
        feats.append(f.numpy())
        probs.append(torch.sigmoid(model.fc(f).squeeze(1)).numpy())
    return np.concatenate(feats), np.concatenate(probs)


class FeatureDistance:
    """The nearer-class Mahalanobis distance, one shrunk covariance for both classes."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray) -> None:
        self.means = np.stack([feats[labels == k].mean(0) for k in (0, 1)])
        centred = feats - self.means[labels]
        self.precision = LedoitWolf(assume_centered=True).fit(centred).precision_

    def score(self, feats: np.ndarray) -> np.ndarray:
        d = [np.einsum("ij,jk,ik->i", feats - m, self.precision, feats - m) for m in self.means]
        return np.sqrt(np.minimum(*d))


def nlm_groups(masks: Path) -> dict[str, list[Path]]:
    with open(masks / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    age = {r["id"]: int(r["age"]) if r["age"].strip() else None for r in rows}

    def pick(test) -> list[Path]:
        return [masks / "images" / f"{r['id']}.png" for r in rows if test(r["source"], age[r["id"]])]

    return {
        "NLM: Shenzhen adults (18 or older)": pick(lambda s, a: s == "shenzhen" and a is not None and a >= 18),
        "NLM: Shenzhen children aged 1-5": pick(lambda s, a: s == "shenzhen" and a is not None and a <= 5),
        "NLM: Shenzhen children aged 6-17": pick(lambda s, a: s == "shenzhen" and a is not None and 5 < a < 18),
        "NLM: Montgomery (no age given)": pick(lambda s, a: s == "montgomery"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--masks", default="../shared/data/lung_masks")
    ap.add_argument("--fullres", default="../shared/data/fullres_samples")
    args = ap.parse_args()
    t0 = time.time()
    loaded = load_model(args.model)
    split = training_split(args.data, TrainConfig.from_dict(loaded.meta["config"]))[0]
    train_f, _ = features(loaded, [s.path for s in split.train])
    distance = FeatureDistance(train_f, np.array([s.label for s in split.train]))
    val_f, _ = features(loaded, [s.path for s in split.val])
    threshold = float(np.quantile(distance.score(val_f), 0.99))
    test = find_split(args.data, "test")
    test_f, test_p = features(loaded, [s.path for s in test])
    test_score = distance.score(test_f)
    wrong = (test_p >= loaded.threshold).astype(int) != np.array([s.label for s in test])
    groups = {
        "validation (sets the threshold)": distance.score(val_f),
        "Kaggle test split": test_score,
        "Kaggle test split: the model's errors": test_score[wrong],
        "Kaggle test split: right calls": test_score[~wrong],
        "Kaggle full-resolution originals": distance.score(
            features(loaded, sorted(Path(args.fullres).rglob("*.jp*g")))[0]
        ),
        **{k: distance.score(features(loaded, v)[0]) for k, v in nlm_groups(Path(args.masks)).items()},
    }
    print(f"threshold {threshold:.2f} (99th percentile of the {len(val_f)} validation films)\n")
    print(flag_table(groups, threshold, "median distance"))
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
