"""Is refitting on every training film worth it? The procedure simulated one level down (round 27
of docs/results.md).

    python benchmarks/refit_check.py holdout --split runs/v26/e32_s17/split.json --out runs/v27/holdout.txt
    python benchmarks/refit_check.py score --holdout runs/v27/holdout.txt \
        --pair runs/v27/a_s17 runs/v26/e32_s17 [--pair A B ...]

``holdout`` carves a patient-held-out 15% (``--fraction``) of a run's training part, as the
validation split is carved from train, and writes it as an exclusion list for ``pneumolens train
--exclude``. ``score`` takes pairs of runs of one recipe and seed: A trained without the held-out
films (the twin), B on all of them (the refit). A's temperature and operating point are refitted on
the held-out films; B is given them (in raw-logit space, as a refit carries its twin's); both are
scored on the run's validation films, which neither was chosen on. Prints one row per run and
writes nothing. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumolens.checkpoint import load_model
from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import Sample, kaggle_samples
from pneumolens.data.split import patient_split, read_exclusions
from pneumolens.evaluation.calibration import expected_calibration_error
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.recalibrate import refit
from pneumolens.inference import predict_samples

POLICY = "sensitivity:0.97"


def holdout(args: argparse.Namespace) -> None:
    train = kaggle_samples(json.loads(args.split.read_text())["train"])
    held = patient_split(train, args.fraction, args.seed).val
    header = f"# refit check: {len(held)} of {len(train)} training films held out (patients, seed {args.seed})\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n".join(s.path for s in held) + "\n")
    counts = {c: sum(s.label == i for s in held) for i, c in enumerate(CLASS_NAMES)}
    print(f"{args.out}: {len(held)} films held out {counts}, {len(train) - len(held)} kept")


def raw_logits(run: Path, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the network's logits before its folded temperature."""
    loaded = load_model(run / "model.safetensors")
    z, errors = predict_samples(loaded.model, samples, loaded.preprocess, num_workers=2, logits=True)
    if errors:
        raise ValueError(f"{run}: {len(errors)} unreadable film(s), e.g. {next(iter(errors.items()))}")
    t = float(loaded.meta.get("calibration", {}).get("temperature", 1.0))
    return np.array([s.label for s in samples]), np.array([z[s.path] for s in samples]) * t


def row(name: str, y: np.ndarray, raw: np.ndarray, t: float, thr: float) -> dict:
    p = 1 / (1 + np.exp(-raw / t))
    m = binary_metrics(y, p, thr)
    m["ece"] = expected_calibration_error(y, p)
    print(
        f"| {name} | {t:.3f} | {thr:.3f} | {m['roc_auc']:.5f} | {100 * m['accuracy']:.1f}% | "
        f"{100 * m['sensitivity']:.1f}% | {100 * m['specificity']:.1f}% | {m['ece']:.3f} |"
    )
    return m


def score(args: argparse.Namespace) -> None:
    held = set(read_exclusions(args.holdout))
    print("| run | temperature | threshold | val ROC-AUC | val acc | val sens | val spec | val ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in args.pair:
        val = kaggle_samples(json.loads((b / "split.json").read_text())["val"])
        a_split = json.loads((a / "split.json").read_text())
        e = kaggle_samples([p for p in a_split["excluded"] if p in held])
        if len(e) != len(held):
            raise ValueError(f"{a}: excluded {len(e)} of the {len(held)} held-out films; train it with --exclude")
        y_e, z_e = raw_logits(a, e)
        t, thr = refit(y_e, z_e, POLICY)
        y, z_a = raw_logits(a, val)
        _, z_b = raw_logits(b, val)
        row(f"A {a.name} (own operating point, from the held-out films)", y, z_a, t, thr)
        row(f"B {b.name} (A's operating point)", y, z_b, t, thr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("holdout")
    h.add_argument("--split", type=Path, required=True, help="a run's split.json")
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--fraction", type=float, default=0.15)
    h.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("--holdout", type=Path, required=True)
    s.add_argument("--pair", type=Path, nargs=2, action="append", required=True, metavar=("A", "B"))
    args = ap.parse_args()
    holdout(args) if args.cmd == "holdout" else score(args)


if __name__ == "__main__":
    main()
