"""Can the two Kaggle normal series be told apart: from the pixels, and from a model's features?

    python benchmarks/series_probe.py --split runs/v13/s8/split.json [--data ../shared/data/chest_xray] [RUN ...]

A logistic regression learns ``IM`` against ``NORMAL2`` on the training part's normal films and is
scored (ROC-AUC) on the validation part's and the test split's normal films; the inputs are either
the model input itself shrunk to 16 x 16 pixels (what the series look like, model aside) or a
model's average-pooled features (what the network keeps of it; RUN is a run directory or
``default``, the shipped model). It also reports the probe's mean probability of ``NORMAL2`` for
the pneumonia films of validation: near 1, the pneumonia films look like the ``NORMAL2`` series;
near 0, like ``IM``. The same split as the model's must be given (its ``split.json``). A diagnostic:
it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pneumolens.checkpoint import load_model
from pneumolens.data.dataset import inference_loader
from pneumolens.data.sources import Sample, find_split, kaggle_samples
from pneumolens.data.subgroups import kaggle_subgroup
from pneumolens.training.adversary import SERIES


@torch.no_grad()
def embed(model: torch.nn.Module, samples: list[Sample], cfg) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, 16 x 16 shrunken inputs and pooled features of every readable film."""
    model.eval()
    paths, pixels, feats = [], [], []
    for batch in inference_loader(samples, cfg, 64, 0):
        x = batch["image"].contiguous(memory_format=torch.channels_last)
        if not x.numel():
            continue
        paths += batch["path"]
        pixels.append(F.adaptive_avg_pool2d(x.float(), 16).flatten(1).numpy())
        feats.append(model.forward_features(x).float().mean((2, 3)).numpy())
    return paths, np.concatenate(pixels), np.concatenate(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--split", required=True, help="split.json of a run trained on the same patient split")
    ap.add_argument("runs", nargs="*", default=["default"])
    args = ap.parse_args()
    lists = json.loads(Path(args.split).read_text())
    films = {part: kaggle_samples(lists[part]) for part in ("train", "val")}
    films["test"] = find_split(args.data, "test")
    print("| model | input | val ROC-AUC (IM vs NORMAL2) | test ROC-AUC | val pneumonia films: mean P(NORMAL2) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        loaded = load_model(None if run == "default" else run)
        data = {}
        for part, samples in films.items():
            paths, pixels, feats = embed(loaded.model, samples, loaded.preprocess)
            groups = np.array([kaggle_subgroup(p, int(Path(p).parent.name == "PNEUMONIA")) for p in paths])
            data[part] = (groups, {"16 x 16 pixels": pixels, "pooled features": feats})
        for kind in ("16 x 16 pixels", "pooled features"):
            groups, inputs = data["train"]
            keep = np.isin(groups, list(SERIES))
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            probe.fit(inputs[kind][keep], [SERIES[g] for g in groups[keep]])
            cells = []
            for part in ("val", "test"):
                g, x = data[part][0], data[part][1][kind]
                k = np.isin(g, list(SERIES))
                cells.append(f"{roc_auc_score([SERIES[v] for v in g[k]], probe.predict_proba(x[k])[:, 1]):.3f}")
            g, x = data["val"][0], data["val"][1][kind]
            pneumonia = np.char.startswith(g.astype(str), "PNEUMONIA")
            cells.append(f"{probe.predict_proba(x[pneumonia])[:, 1].mean():.2f}")
            print(f"| {run} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
