"""Choose the best of several training draws, or average some of them? Judged on validation without
the winner's bias (quality issue, item 3).

    python benchmarks/select_vs_ensemble.py --pool default runs/v13/s8 ... --ensemble runs/v13/s8 runs/v13/s9
    python benchmarks/select_vs_ensemble.py --pool default runs/v28/s18 ... --top 3

Choosing the draw with the best validation ROC-AUC and then quoting that ROC-AUC flatters the choice.
Here the validation patients are halved at random many times: in each halving the pool member
that is best on half A is scored on half B, as is every fixed ensemble (mean logit) and the pool's
members on average; ``--top K`` adds the ensemble of the K pool members best on half A, so that
choosing the members is judged as well. Specificity on B is taken at the threshold chosen on A for
97% sensitivity. All runs must share one validation split (``split.json``); ``default`` is the
shipped model, validated on the split of the ``default`` preset. With ``--external`` (the
lung_masks folder), each ensemble (a ``--top K`` one: the K best on all of validation) also gets
its own 97%-sensitivity threshold on all of validation and the share of the external normal films
it calls pneumonia there: the rest of the shipped model's bar. Only validation (and the external
films) are read. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablation import external_normals  # same folder
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import load_model
from pneumolens.data.sources import Sample, patient_id
from pneumolens.evaluation.calibration import choose_threshold
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.inference import predict_samples

POLICY = "sensitivity:0.97"


def val_logits(run: str, samples: list[Sample]) -> np.ndarray:
    loaded = load_model(None if run == "default" else run)
    logits, errors = predict_samples(loaded.model, samples, loaded.preprocess, logits=True)
    if errors:
        raise SystemExit(f"{run}: unreadable validation films, e.g. {next(iter(errors.items()))}")
    return np.array([logits[s.path] for s in samples])


def spec_on_b(z: np.ndarray, y: np.ndarray, a: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-z))
    return binary_metrics(y[~a], p[~a], choose_threshold(y[a], p[a], POLICY))["specificity"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", nargs="+", required=True, help="run folders (or 'default') to choose from")
    ap.add_argument("--ensemble", nargs="+", action="append", default=[], help="members of one fixed ensemble")
    ap.add_argument("--top", type=int, action="append", default=[], help="the K pool members best on half A")
    ap.add_argument("--halvings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--external", help="lung_masks folder: each ensemble's external normals called pneumonia")
    args = ap.parse_args()
    if not args.ensemble and not args.top:
        ap.error("give at least one --ensemble or --top")
    if bad := [k for k in args.top if not 2 <= k <= len(args.pool)]:
        ap.error(f"--top {bad[0]}: needs 2 to {len(args.pool)} (the pool's size)")
    runs = list(dict.fromkeys(args.pool + [r for e in args.ensemble for r in e]))
    folders = [r for r in runs if r != "default"]
    if not folders:
        raise SystemExit("name at least one run folder: its split.json gives the validation films")
    paths = json.loads((Path(folders[0]) / "split.json").read_text())["val"]
    for r in folders:
        if json.loads((Path(r) / "split.json").read_text())["val"] != paths:
            raise SystemExit(f"{r} was validated on another split than {folders[0]}")
    y = np.array([int("/PNEUMONIA/" in p) for p in paths])
    samples = [Sample(p, int(label), patient_id(p)) for p, label in zip(paths, y, strict=True)]
    z = {r: val_logits(r, samples) for r in runs}

    def ranked(mask: np.ndarray, k: int) -> list[str]:  # the k pool members best on these films
        return sorted(args.pool, key=lambda r: -roc_auc_score(y[mask], z[r][mask]))[:k]

    everything = np.ones(len(y), bool)
    args.ensemble += [ranked(everything, k) for k in args.top]  # chosen on all of validation (external table)
    ens = {" + ".join(Path(m).name for m in e): np.mean([z[m] for m in e], 0) for e in args.ensemble}
    pat = np.array([patient_id(p) for p in paths])
    patients = np.unique(pat)
    rng = np.random.default_rng(args.seed)
    chosen: dict[str, int] = dict.fromkeys(args.pool, 0)
    tops = [f"top {k} of pool on A" for k in args.top]
    auc: dict[str, list[float]] = {k: [] for k in ["best of pool on A", "mean pool member", *ens, *tops]}
    spec: dict[str, list[float]] = {k: [] for k in ["best of pool on A", *ens, *tops]}
    while len(auc["mean pool member"]) < args.halvings:
        a = np.isin(pat, rng.choice(patients, len(patients) // 2, replace=False))
        if len(set(y[a])) < 2 or len(set(y[~a])) < 2:
            continue
        order = ranked(a, len(args.pool))  # the pool, best on half A first
        chosen[order[0]] += 1
        scored = {"best of pool on A": z[order[0]], **ens}
        scored |= {name: np.mean([z[r] for r in order[:k]], 0) for name, k in zip(tops, args.top, strict=True)}
        for k, zk in scored.items():
            auc[k].append(roc_auc_score(y[~a], zk[~a]))
            spec[k].append(spec_on_b(zk, y, a))
        auc["mean pool member"].append(float(np.mean([roc_auc_score(y[~a], z[r][~a]) for r in args.pool])))
    sel = np.array(auc["best of pool on A"])
    print(f"validation: {len(y)} films, {len(patients)} patients; {args.halvings} halvings (seed {args.seed})")
    print(
        "| on half B | full-validation ROC-AUC | mean ROC-AUC on B (sd) | spec on B at A's 97%-sens threshold "
        "| above 'best of pool' in |"
    )
    print("|---|---|---|---|---|")
    for k, v in auc.items():
        v = np.array(v)
        full = f"{roc_auc_score(y, ens[k]):.4f}" if k in ens else "-"
        s = f"{100 * np.mean(spec[k]):.1f}%" if k in spec else "-"
        above = f"{100 * np.mean(v > sel):.1f}%" if k in ens or k in tops else "-"
        print(f"| {k} | {full} | {v.mean():.4f} ({v.std():.4f}) | {s} | {above} |")
    print("chosen on A: " + ", ".join(f"{Path(r).name} {n}" for r, n in chosen.items()))
    if args.external:
        external_table(args.ensemble, ens, y, args.external)


def external_table(ensembles: list[list[str]], ens: dict[str, np.ndarray], y: np.ndarray, folder: str) -> None:
    """Each ensemble at its own operating point (mean logit, uncalibrated, chosen on all of validation):
    validation sensitivity and specificity, and the external normal films it calls pneumonia."""
    normals = [Sample(p, 0, p) for p in external_normals(folder)]
    print(f"\n| ensemble | threshold | val sens | val spec | external normals called pneumonia (of {len(normals)}) |")
    print("|---|---|---|---|---|")
    for members, (name, z) in zip(ensembles, ens.items(), strict=True):
        p = 1 / (1 + np.exp(-z))
        t = choose_threshold(y, p, POLICY)
        m = binary_metrics(y, p, t)
        pe = 1 / (1 + np.exp(-np.mean([val_logits(r, normals) for r in members], 0)))
        flagged = int((pe >= t).sum())
        print(
            f"| {name} | {t:.3f} | {100 * m['sensitivity']:.1f}% | {100 * m['specificity']:.1f}% "
            f"| {flagged} ({100 * flagged / len(normals):.1f}%) |"
        )


if __name__ == "__main__":
    main()
