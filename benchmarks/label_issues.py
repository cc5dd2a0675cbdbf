"""Find training films whose label the recipe itself doubts (confident learning), to leave out.

    python benchmarks/label_issues.py --data ../shared/data/chest_xray --out runs/label_issues [--folds 3]

Then train without them (validation is untouched, so the two runs compare on the same images):

    pneumolens train --data ../shared/data/chest_xray --exclude runs/label_issues/exclude.txt --out runs/x

Why: the Kaggle set's training labels were graded by two physicians, its test labels checked by a
third as well (Kermany et al., Cell 2018), so the training part (and the validation carved from it)
may hold label errors the test split does not. The training part of the preset's patient split is
cut into ``--folds`` folds by patient; the preset is trained on all folds but one (a run of its own,
with its own inner validation, and the weight average warmed up) and scores the held-out fold, so
every training film gets an out-of-fold probability from a model that never saw its patient.
cleanlab's ``find_label_issues`` (confident learning: per-class thresholds, pruned by the estimated
noise rates) then names the films whose given label disagrees with those probabilities. The
validation part is never scored or changed. Writes ``oof.csv`` (every film), ``label_issues.csv``
(the named films, most doubtful first) and ``exclude.txt`` (their file names, for ``--exclude``),
and prints a table. Fold runs that already hold a model are reused.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import atomic_write
from pneumolens.config import CLASS_NAMES, resolve_config
from pneumolens.training.crossval import out_of_fold
from pneumolens.training.fit import training_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="the fold models' epochs (default: the preset's)")
    ap.add_argument("--limit", type=int, help="a stratified subset of the training images (smoke runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from cleanlab.filter import find_label_issues  # the dev extra: only this script needs it

    out = Path(args.out)
    cfg = resolve_config(args.preset, epochs=args.epochs, limit=args.limit)
    split, _ = training_split(args.data, cfg)  # the same training part as `pneumolens train --preset ...`
    samples = split.train
    t0 = time.time()
    res = out_of_fold(samples, cfg, out, args.folds, cfg.patient_split_seed, cfg.num_workers)
    # The fold models warm their weight average up (crossval.fold_config): without it, two of three
    # kept their epoch-0 weights here (fold ROC-AUCs of 0.64, docs/results.md, round 8).
    rows = []
    for k, run in enumerate(res.runs):
        held = res.folds == k
        auc = roc_auc_score(res.labels[held], res.probs[held])
        if auc < 0.8:
            raise SystemExit(f"{run}: out-of-fold ROC-AUC {auc:.3f}: this fold's model cannot vouch for labels")
        rows.append((k, len(res.paths) - int(held.sum()), int(held.sum()), auc))
    paths, labels, p = res.paths, res.labels, res.probs
    fold_of = dict(zip(paths, res.folds.tolist(), strict=True))
    ranked = find_label_issues(
        labels,
        np.stack([1 - p, p], axis=1),  # (N, 2): NORMAL, PNEUMONIA
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
    )

    def table(order) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "p_pneumonia", "fold"])
        w.writerows([paths[i], CLASS_NAMES[labels[i]], f"{p[i]:.6f}", fold_of[paths[i]]] for i in order)
        return buf.getvalue()

    note = f"# {len(ranked)} training films whose label the {args.preset} recipe doubts (benchmarks/label_issues.py)\n"
    for name, text in (
        ("oof.csv", table(range(len(paths)))),
        ("label_issues.csv", table(ranked)),
        ("exclude.txt", note + "".join(f"{Path(paths[i]).name}\n" for i in ranked)),
    ):
        atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))

    print(f"{len(samples)} training films, {args.folds} patient folds, {(time.time() - t0) / 60:.1f} min\n")
    print("| fold | trained on | scored | out-of-fold ROC-AUC |")
    print("|---|---|---|---|")
    for k, n_train, n_held, auc in rows:
        print(f"| {k} | {n_train} | {n_held} | {auc:.4f} |")
    print(f"| all | | {len(paths)} | {roc_auc_score(labels, p):.4f} |\n")
    for path, reason in res.unreadable.items():
        print(f"unreadable, not scored: {path} ({reason})")
    print("| given label | films | named as label issues | share |")
    print("|---|---|---|---|")
    for c, name in enumerate(CLASS_NAMES):
        n, m = int((labels == c).sum()), int((labels[ranked] == c).sum())
        print(f"| {name} | {n} | {m} | {100 * m / max(n, 1):.1f}% |")
    print(f"\nwritten: {out / 'exclude.txt'}, {out / 'label_issues.csv'}, {out / 'oof.csv'}")


if __name__ == "__main__":
    main()
