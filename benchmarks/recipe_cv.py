"""Compare training recipes by patient cross-validation on all training films, not one validation split.

    python benchmarks/recipe_cv.py --data ../shared/data/chest_xray --out runs/cv \\
        --recipe shipped= --recipe seed2='--seed 2' --recipe smooth='--label-smoothing 0.1'

Each ``--recipe NAME=FLAGS`` takes ``pneumolens train`` flags (on top of ``--preset``); the first is
the reference. The training part of the preset's patient split (the films `pneumolens train` trains
on; its validation part is never touched) is cut into ``--folds`` patient folds, the same folds for
every recipe, and each recipe is trained once per fold on the other folds
(:mod:`pneumolens.training.crossval`: its own inner validation, the weight average warmed up)
and scores the held-out fold. Every training film is then scored by a model of each recipe that
never saw its patient: the comparison is paired, film by film, over ~4,500 films instead of 746.

Printed per recipe: ROC-AUC of each fold, their mean, ROC-AUC and log loss of all out-of-fold scores
pooled, specificity at 97% sensitivity on the pooled scores (a descriptive figure: the threshold is
set on the same scores), and against the reference the folds it wins, the difference in pooled
ROC-AUC with a 95% interval from a bootstrap over patients. That interval holds the data's
sampling noise only; a second seed of the reference (``--recipe seed2='--seed 2'``) shows the
training's. Runs live in ``OUT/NAME/fold{i}``; finished ones are reused and interrupted ones resume,
so a study can grow a recipe at a time. Writes ``OUT/oof.csv`` (every film, every recipe) and
``OUT/summary.json``.

``--group-by lung-exposure`` (or a DICOM attribute, as ``pneumolens evaluate --group-by``) adds, per
recipe, the pooled specificity at 97% sensitivity of each group's normal films (one threshold, set on
all pooled scores): descriptive, like the overall figure.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shlex
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from pneumolens.checkpoint import atomic_write
from pneumolens.cli import build_parser, train_config
from pneumolens.config import CLASS_NAMES, resolve_config
from pneumolens.data.subgroups import grouped_by
from pneumolens.evaluation.calibration import choose_threshold
from pneumolens.training.crossval import OutOfFold, out_of_fold, paired_auc_difference
from pneumolens.training.fit import training_split

# Flags that would change which films are compared, or how they are split, rather than the recipe; and
# a teacher, which learnt from every film of the training part, each fold's held-out films included.
NOT_A_RECIPE = (
    "--data",
    "--out",
    "--resume",
    "--preset",
    "--limit",
    "--split-seed",
    "--val-fraction",
    "--exclude",
    "--teacher",
)


def parse_recipe(spec: str, preset: str):
    """``NAME=FLAGS`` -> (name, flags, TrainConfig), read by ``pneumolens train``'s own parser."""
    name, sep, flags = spec.partition("=")
    if not sep or not name or "/" in name or name.startswith("."):
        raise SystemExit(f"--recipe {spec!r}: expected NAME=FLAGS, e.g. smooth='--label-smoothing 0.1'")
    try:
        argv = shlex.split(flags)
    except ValueError as e:
        raise SystemExit(f"--recipe {name}: cannot split its flags ({e})") from None
    if bad := [a for a in argv if a.split("=")[0] in NOT_A_RECIPE]:
        raise SystemExit(f"--recipe {name}: {', '.join(bad)} is not a recipe flag (the study fixes data and folds)")
    try:
        args = build_parser().parse_args(["train", "--preset", preset, *argv])
    except SystemExit:
        raise SystemExit(f"--recipe {name}: `pneumolens train` does not accept {flags!r} (see above)") from None
    return name, flags, train_config(args)


def specificity_at(y: np.ndarray, p: np.ndarray, sensitivity: float = 0.97) -> float:
    """Specificity at the highest threshold that keeps ``sensitivity`` on these scores."""
    return float((p[y == 0] < choose_threshold(y, p, f"sensitivity:{sensitivity}")).mean())


def group_specificity(res: OutOfFold, group_of: dict[str, str], sensitivity: float = 0.97) -> dict[str, list]:
    """Per group: [normal films, specificity of those films] at the pooled threshold for ``sensitivity``."""
    thr = choose_threshold(res.labels, res.probs, f"sensitivity:{sensitivity}")
    groups = np.array([group_of[path] for path in res.paths])
    out = {}
    for g in sorted(set(groups[res.labels == 0].tolist())):
        normal = (res.labels == 0) & (groups == g)
        out[g] = [int(normal.sum()), float((res.probs[normal] < thr).mean())]
    return out


def fold_aucs(res: OutOfFold) -> list[float]:
    return [roc_auc_score(res.labels[res.folds == k], res.probs[res.folds == k]) for k in range(len(res.runs))]


def summarise(name: str, flags: str, res: OutOfFold, ref: OutOfFold) -> dict:
    folds = fold_aucs(res)
    row = {
        "recipe": name,
        "flags": flags,
        "fold_auc": folds,
        "mean_fold_auc": float(np.mean(folds)),
        "pooled_auc": float(roc_auc_score(res.labels, res.probs)),
        "log_loss": float(log_loss(res.labels, np.clip(res.probs, 1e-7, 1 - 1e-7))),
        "spec_at_97_sens": specificity_at(res.labels, res.probs),
        "films": len(res.paths),
        "train_min": sum(res.train_seconds) / 60,
    }
    if ref is not res:
        if res.paths != ref.paths:
            raise SystemExit(f"{name}: scored other films than the reference (an unreadable file?); cannot pair")
        diff, ci = paired_auc_difference(res.labels, ref.probs, res.probs, res.patients)
        row |= {"folds_better": sum(a > b for a, b in zip(folds, fold_aucs(ref), strict=True)), "auc_diff": diff}
        row["auc_diff_ci"] = ci
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=FLAGS")
    ap.add_argument("--limit", type=int, help="a stratified subset of the training images (smoke runs)")
    ap.add_argument("--group-by", metavar="KEY", help="lung-exposure or a DICOM attribute: specificity per group")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    recipes = [parse_recipe(spec, args.preset) for spec in args.recipe]
    if len({name for name, _, _ in recipes}) < len(recipes):
        raise SystemExit("two --recipe share a name")
    out = Path(args.out)
    base = resolve_config(args.preset, limit=args.limit)
    split, _ = training_split(args.data, base)  # the training part `pneumolens train --preset` trains on
    group_of = None
    if args.group_by:  # before any training, so that a wrong key fails at once
        try:
            group_of = {s.path: s.group for s in grouped_by(split.train, args.group_by)}
        except ValueError as e:
            raise SystemExit(str(e)) from None
    results: dict[str, OutOfFold] = {}
    t0 = time.time()
    for name, _, cfg in recipes:
        results[name] = out_of_fold(split.train, cfg, out / name, args.folds, base.patient_split_seed, base.num_workers)
    ref = results[recipes[0][0]]
    rows = [summarise(name, flags, results[name], ref) for name, flags, _ in recipes]
    if group_of is not None:
        for row in rows:
            row["group_spec_at_97_sens"] = group_specificity(results[row["recipe"]], group_of)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "patient", "fold", *[f"p_{name}" for name, _, _ in recipes]])
    by = [results[name] for name, _, _ in recipes]
    for i, path in enumerate(ref.paths):
        w.writerow(
            [path, CLASS_NAMES[ref.labels[i]], ref.patients[i], ref.folds[i], *[f"{r.probs[i]:.6f}" for r in by]]
        )
    atomic_write(out / "oof.csv", lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
    text = json.dumps({"preset": args.preset, "folds": args.folds, "recipes": rows}, indent=2)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    k = args.folds
    print(f"{len(split.train)} training films, {k} patient folds; reference: {recipes[0][0]}\n")
    fold_cols = " | ".join(f"fold {i} AUC" for i in range(k))
    print(
        f"| recipe | flags | {fold_cols} | mean fold AUC | pooled AUC | log loss | spec at 97% sens "
        "| folds better | pooled AUC - reference [95% CI, patients] | training (min, all folds) |"
    )
    print("|---|---|" + "---|" * (k + 8))
    for r in rows:
        d, better = "", ""
        if "auc_diff" in r:
            d = f"{r['auc_diff']:+.4f} [{r['auc_diff_ci'][0]:+.4f}, {r['auc_diff_ci'][1]:+.4f}]"
            better = f"{r['folds_better']}/{k}"
        print(
            f"| {r['recipe']} | `{r['flags']}` | "
            + " | ".join(f"{a:.4f}" for a in r["fold_auc"])
            + f" | {r['mean_fold_auc']:.4f} | {r['pooled_auc']:.4f} | {r['log_loss']:.4f} "
            f"| {100 * r['spec_at_97_sens']:.1f}% | {better} "
            f"| {d} | {r['train_min']:.1f} |"
        )
    if args.group_by:
        print(f"\n| recipe | {args.group_by} | normal films | spec at 97% sens (pooled threshold) |\n|---|---|---|---|")
        for r in rows:
            for g, (n, spec) in r["group_spec_at_97_sens"].items():
                print(f"| {r['recipe']} | {g} | {n} | {100 * spec:.1f}% |")
    print(f"\n{(time.time() - t0) / 60:.1f} min (fold runs that already held a model were reused)")
    print(f"written: {out / 'oof.csv'}, {out / 'summary.json'}")


if __name__ == "__main__":
    main()
