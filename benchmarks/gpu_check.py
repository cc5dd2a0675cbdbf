"""What a GPU machine must show (issue 7): the shipped model scores and explains the same there.

    python benchmarks/gpu_check.py --data ../shared/data/chest_xray [--model PATH] [--explain 3]

On a machine with CUDA: predicts the test split with the model on the CPU and on the GPU (the
``Predictor``'s default there), and explains a few images with each method on both. Prints a table
(probability differences, label disagreements, accuracy at the stored threshold, heatmap
correlations, seconds) and exits 1 if the GPU departs from the CPU by more than its tolerances
(TF32 convolutions on the GPU round differently, so bit equality is not expected). Not part of CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from presets import machine  # noqa: E402

MAX_PROB_DIFF = 0.02  # largest |p_gpu - p_cpu| accepted on any image
MIN_MAP_CORRELATION = 0.95  # Pearson correlation of the CPU and GPU heatmaps, each method


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--model", help="model file or run directory (default: the shipped model)")
    ap.add_argument("--explain", type=int, default=3, help="images explained with each method")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2

    from pneumolens.checkpoint import load_model
    from pneumolens.data.sources import find_split
    from pneumolens.explain import explain_image
    from pneumolens.inference import Predictor

    test = find_split(args.data, "test")
    paths = [s.path for s in test]
    y = np.array([s.label for s in test])
    rows: list[tuple[str, str]] = []
    failed: list[str] = []

    probs = {}
    for device in ("cpu", "cuda"):
        predictor = Predictor(load_model(args.model), device=device)
        predictor.predict_paths(paths[:64])  # warm-up (cuDNN picks its kernels)
        t = time.perf_counter()
        preds = predictor.predict_paths(paths)
        seconds = time.perf_counter() - t
        probs[device] = np.array([p.probability for p in preds], dtype=float)
        acc = float(((probs[device] >= predictor.threshold) == y).mean())
        rows.append((f"predict {len(paths)} files, {device}", f"{len(paths) / seconds:.0f} img/s, accuracy {acc:.4f}"))
    diff = np.abs(probs["cuda"] - probs["cpu"])
    threshold = load_model(args.model).threshold
    flips = int(((probs["cuda"] >= threshold) != (probs["cpu"] >= threshold)).sum())
    rows.append(("max / mean |p_gpu - p_cpu|", f"{diff.max():.2e} / {diff.mean():.2e}"))
    rows.append(("labels that differ", str(flips)))
    if diff.max() > MAX_PROB_DIFF:
        failed.append(f"probabilities differ by up to {diff.max():.3f} (> {MAX_PROB_DIFF})")

    cpu_model, gpu_model = load_model(args.model), load_model(args.model)
    gpu_model.model.to("cuda")
    picks = paths[:: max(1, len(paths) // args.explain)][: args.explain]
    for method in ("gradcam", "occlusion", "lime"):
        explain_image(gpu_model, picks[0], method)  # warm-up
        corr, secs = [], {"cpu": [], "cuda": []}
        for p in picks:
            e_cpu, e_gpu = explain_image(cpu_model, p, method), explain_image(gpu_model, p, method)
            secs["cpu"].append(e_cpu.seconds)
            secs["cuda"].append(e_gpu.seconds)
            corr.append(float(np.corrcoef(e_cpu.model_map.ravel(), e_gpu.model_map.ravel())[0, 1]))
        rows.append(
            (
                f"{method}: CPU / GPU seconds per image, min heatmap correlation",
                f"{np.median(secs['cpu']):.3f} / {np.median(secs['cuda']):.3f} s, {min(corr):.4f}",
            )
        )
        if min(corr) < MIN_MAP_CORRELATION:
            failed.append(f"{method} heatmaps correlate at {min(corr):.3f} (< {MIN_MAP_CORRELATION})")

    print(f"\nmachine: {machine()}\n")
    print("| check | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    for f in failed:
        print(f"FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
