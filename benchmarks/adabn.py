"""Does re-estimating batch-norm statistics on a site's unlabelled films help? (AdaBN, Li et al. 2016)

    python benchmarks/adabn.py --data ../shared/data/chest_xray --external ../shared/data/lung_masks [--model RUN]

Scores the model on the test split and the external normal films (``tb_label`` 0 of the lung_masks
manifest) three ways: as it is; with its batch-norm statistics re-estimated on the unlabelled test
films; and re-estimated on all external films. A transductive diagnostic of the shift, not a recipe:
it writes no model and chooses nothing.
"""

from __future__ import annotations

import argparse
import copy
import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumolens.checkpoint import load_model
from pneumolens.config import PreprocessConfig
from pneumolens.data.dataset import inference_loader
from pneumolens.data.sources import Sample, check_headers, find_split
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.inference import predict_samples


@torch.no_grad()
def adapted(model: nn.Module, samples: list[Sample], cfg: PreprocessConfig) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are the plain average over ``samples``."""
    m = copy.deepcopy(model)
    norms = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch
        bn.train()
    for batch in inference_loader(samples, cfg, 64, 0):
        if batch["image"].numel():
            m(batch["image"].contiguous(memory_format=torch.channels_last))
    return m.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--external", required=True, help="the lung_masks folder (manifest.csv, images/)")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    loaded = load_model(args.model)
    cfg, thr = loaded.preprocess, loaded.threshold
    test, _ = check_headers(find_split(args.data, "test"))
    rows = list(csv.DictReader(open(Path(args.external) / "manifest.csv", newline="")))
    ext = [Sample(str(Path(args.external) / "images" / f"{r['id']}.png"), int(r["tb_label"]), r["id"]) for r in rows]
    ext_normal = [s for s in ext if s.label == 0]
    print(
        "| batch-norm statistics | test acc | test sens | test spec | test ROC-AUC "
        "| external normals called pneumonia |"
    )
    print("|---|---|---|---|---|---|")
    for name, model in (
        ("as trained", loaded.model),
        ("re-estimated on the test films", adapted(loaded.model, test, cfg)),
        (f"re-estimated on all {len(ext)} external films", adapted(loaded.model, ext, cfg)),
    ):
        p, _ = predict_samples(model, test, cfg)
        scored = [s for s in test if s.path in p]
        m = binary_metrics([s.label for s in scored], [p[s.path] for s in scored], thr)
        pe, _ = predict_samples(model, ext_normal, cfg)
        fpr = float(np.mean(np.array(list(pe.values())) >= thr))
        print(
            f"| {name} | {100 * m['accuracy']:.1f}% | {100 * m['sensitivity']:.1f}% | {100 * m['specificity']:.1f}% "
            f"| {m['roc_auc']:.4f} | {100 * fpr:.1f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
