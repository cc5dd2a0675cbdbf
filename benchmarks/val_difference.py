"""Is one model's validation lead over another more than the validation films' sampling noise?

    python benchmarks/val_difference.py REFERENCE NEW [NEW ...] --data ../shared/data/chest_xray

Every model (a run folder or a bare model file) is scored on the validation films of REFERENCE's
patient split (drawn again from its recorded config; each model must have been trained on that
split), and each NEW's ROC-AUC minus REFERENCE's is printed with a 95% percentile bootstrap interval
that resamples whole patients (the same films scored by both: a paired comparison). The interval
covers the data's sampling noise only, not the spread between training seeds. Only validation
films are read: test is never touched here. Not part of the test suite.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import load_model
from pneumolens.config import TrainConfig
from pneumolens.data.sources import patient_id
from pneumolens.inference import predict_samples
from pneumolens.training.crossval import paired_auc_difference
from pneumolens.training.distill import VALIDATION_FIELDS
from pneumolens.training.fit import training_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("new", nargs="+")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()

    models = [load_model(m) for m in (args.reference, *args.new)]
    configs = [TrainConfig.from_dict(m.meta["config"]) for m in models]
    for m, cfg in zip(models, configs, strict=True):
        if cfg.refit:
            raise SystemExit(f"{m.path}: a refit, trained on the validation films")
        if any(getattr(cfg, f) != getattr(configs[0], f) for f in VALIDATION_FIELDS):
            raise SystemExit(f"{m.path}: not validated on the reference's split")
    val = training_split(args.data, configs[0])[0].val
    y = np.array([s.label for s in val])
    patients = [patient_id(s.path) for s in val]
    scores = []
    for m in models:
        probs, errors = predict_samples(m.model, val, m.preprocess)
        if errors:
            raise SystemExit(f"unreadable validation films, e.g. {next(iter(errors.items()))}")
        scores.append(np.array([probs[s.path] for s in val]))

    print(f"validation: {len(y)} films, {len(set(patients))} patients; reference {args.reference}")
    print("| model | ROC-AUC | minus the reference's | 95% interval (patients resampled) |")
    print("|---|---|---|---|")
    print(f"| {args.reference} | {roc_auc_score(y, scores[0]):.5f} | | |")
    for name, p in zip(args.new, scores[1:], strict=True):
        diff, (lo, hi) = paired_auc_difference(y, scores[0], p, patients, n_boot=args.n_boot)
        print(f"| {name} | {roc_auc_score(y, p):.5f} | {diff:+.5f} | [{lo:+.5f}, {hi:+.5f}] |")


if __name__ == "__main__":
    main()
