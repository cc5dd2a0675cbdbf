"""Retrain the shipped model's recipe from scratch, evaluate it once on test, print one table.

    python benchmarks/default_recipe.py --data ../shared/data/chest_xray [--out runs/recipe]   # make recipe

The recipe (``pneumolens.training.recipe``): two ``--preset default`` draws, their ensemble as a
teacher, three distilled fine-tunes of the first draw, their weight average. Each step runs as its
own process, so its wall time and peak RSS are its own (os.wait4); the total is what the quality
issue limits to 60 minutes on the 2-core CPU. The preprocessing cache is whatever
``$PNEUMOLENS_CACHE_DIR`` holds (point it at an empty folder to count the cache build; the first
draw builds it). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from presets import machine, run  # noqa: E402

from pneumolens.training.recipe import shipped_recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--out", default="runs/recipe")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags for every train step (smoke runs)")
    args = ap.parse_args()

    exe = [sys.executable, "-m", "pneumolens.cli"]
    rows = []
    for step in shipped_recipe(args.data, args.out, args.extra):
        wall, rss = run([*exe, *step.argv, "--overwrite"])  # from scratch, each time
        val = json.loads((step.out / "val_metrics.json").read_text())
        rows.append((step, wall, rss, val))
    model = rows[-1][0].out
    metrics_path = model / "test_metrics.json"
    eval_s, _ = run([*exe, "evaluate", "--model", str(model), "--data", args.data, "--json", str(metrics_path)])
    m = json.loads(metrics_path.read_text())

    total = sum(wall for _, wall, _, _ in rows)
    print(f"\nmachine: {machine()}\n")
    print("| step | command | wall | peak RSS | val ROC-AUC |")
    print("|---|---|---|---|---|")
    for step, wall, rss, val in rows:
        command = " ".join("DATA" if a == args.data else a for a in step.argv)
        print(f"| {step.name} | `pneumolens {command}` | {wall / 60:.1f} min | {rss:.0f} MiB | {val['roc_auc']:.5f} |")
    verdict = "within" if total <= 3600 else "OVER"
    print(f"| **recipe** | | **{total / 60:.1f} min** ({verdict} the 60-minute limit) | | |")
    ci = m["ci"]
    print(f"\nThe model ({model}), on test once ({eval_s:.0f} s), at its validation threshold {m['threshold']:.3f}:\n")
    print("| accuracy | sensitivity | specificity | ROC-AUC | ECE | confusion `[[tn, fp], [fn, tp]]` |")
    print("|---|---|---|---|---|---|")

    def pct(k: str) -> str:
        return f"{100 * m[k]:.1f}% [{100 * ci[k][0]:.1f}, {100 * ci[k][1]:.1f}]"

    print(
        f"| {pct('accuracy')} | {pct('sensitivity')} | {pct('specificity')} "
        f"| {m['roc_auc']:.4f} [{ci['roc_auc'][0]:.4f}, {ci['roc_auc'][1]:.4f}] | {m['ece']:.3f} "
        f"| `{m['confusion_matrix']}` |"
    )


if __name__ == "__main__":
    main()
