"""The seed's proposal, tested: lung cropping / masking, contrast equalisation and the lung gamma, each on and off.

    python benchmarks/ablation.py [--data ../shared/data/chest_xray] [--preset crop_clahe] [--variants ...]

Trains one model per variant (same seed, same patient split), reads its validation metrics from the
model file, evaluates it once on test, and prints one markdown row per variant as it finishes.
Selection among variants is made on the validation columns only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from presets import run  # same folder: wall time and peak RSS of a child process

# Every variant names every step (lung step, equalisation, lung gamma), so that the table does not
# depend on what the preset does.
VARIANTS = {
    "baseline": ["--lungs", "none", "--equalize", "none", "--lung-gamma", "0"],
    "lungs=crop": ["--lungs", "crop", "--equalize", "none", "--lung-gamma", "0"],
    "lungs=mask": ["--lungs", "mask", "--equalize", "none", "--lung-gamma", "0"],
    "lungs=soft": ["--lungs", "soft", "--equalize", "none", "--lung-gamma", "0"],
    "clahe": ["--lungs", "none", "--equalize", "clahe", "--lung-gamma", "0"],
    "lungs=crop+clahe": ["--lungs", "crop", "--equalize", "clahe", "--lung-gamma", "0"],
    "lungs=crop+clahe+gamma": ["--lungs", "crop", "--equalize", "clahe", "--lung-gamma", "0.45"],
}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def external_normals(folder: str | Path) -> list[str]:
    """The external set's normal films (lung_masks manifest, tb_label 0)."""
    import csv

    rows = csv.DictReader(open(Path(folder) / "manifest.csv"))
    return [str(Path(folder) / "images" / f"{r['id']}.png") for r in rows if r["tb_label"] == "0"]


def external_fpr(run_dir: Path, folder: str | None) -> str:
    """Share of the external set's normal films the model calls pneumonia."""
    if not folder:
        return "-"
    from pneumolens.inference import Predictor

    preds = Predictor.from_checkpoint(run_dir).predict_paths(external_normals(folder))
    return f"{100 * sum(p.label == 'PNEUMONIA' for p in preds) / len(preds):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--preset", default="crop_clahe")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--external",
        help="lung_masks folder (manifest.csv): also report the share of its normal films called pneumonia",
    )
    args = ap.parse_args()
    exe = [sys.executable, "-m", "pneumolens.cli"]
    print(
        "| variant | val acc | val sens | val spec | val AUC | test acc | test sens | test spec | test AUC "
        "| external normals called pneumonia | train min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.variants:
        run_dir = Path(args.out) / name.replace("=", "-").replace("+", "_")
        wall, _ = run(
            [*exe, "train", "--data", args.data, "--preset", args.preset, "--out", str(run_dir), "--overwrite"]
            + VARIANTS[name]
        )
        test_json = run_dir / "test_metrics.json"
        run([*exe, "evaluate", "--model", str(run_dir), "--data", args.data, "--json", str(test_json)])
        v = json.loads((run_dir / "val_metrics.json").read_text())
        t = json.loads(test_json.read_text())
        print(
            f"| {name} | {pct(v['accuracy'])} | {pct(v['sensitivity'])} | {pct(v['specificity'])} | {v['roc_auc']:.4f} "
            f"| {pct(t['accuracy'])} | {pct(t['sensitivity'])} | {pct(t['specificity'])} | {t['roc_auc']:.4f} "
            f"| {external_fpr(run_dir, args.external)} | {wall / 60:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
