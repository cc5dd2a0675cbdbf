"""Train each preset from scratch on DATA/train, evaluate once on DATA/test, print one table.

    python benchmarks/presets.py --data ../shared/data/chest_xray [--presets seed default]

Each step runs as its own process so its wall time and peak RSS are its own (os.wait4).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--presets", nargs="+", default=["seed", "default"])
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()

    exe = [sys.executable, "-m", "pneumolens.cli"]
    rows = []
    for preset in args.presets:
        run_dir = Path(args.out) / preset
        train_s, train_rss = run(
            [*exe, "train", "--data", args.data, "--preset", preset, "--out", str(run_dir), "--overwrite"]
        )
        metrics_path = run_dir / "test_metrics.json"
        eval_s, _ = run([*exe, "evaluate", "--model", str(run_dir), "--data", args.data, "--json", str(metrics_path)])
        m = json.loads(metrics_path.read_text())
        meta_train = json.loads((run_dir / "val_metrics.json").read_text())
        rows.append((preset, train_s, train_rss, eval_s, m, meta_train))

    print(f"\nmachine: {machine()}\n")
    print("| recipe | train wall | peak RSS (train) | test acc | sensitivity | specificity | FPR | ROC-AUC | val acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| seed blog post (Keras, reported) | | | 87% | | | 19% | | |")
    for preset, train_s, rss, _, m, v in rows:
        print(
            f"| `{preset}` | {train_s / 60:.1f} min | {rss:.0f} MiB | {100 * m['accuracy']:.1f}% "
            f"| {100 * m['sensitivity']:.1f}% | {100 * m['specificity']:.1f}% | {100 * m['false_positive_rate']:.1f}% "
            f"| {m['roc_auc']:.3f} | {100 * v['accuracy']:.1f}% |"
        )


if __name__ == "__main__":
    main()
