"""Seconds per image for each explanation method, faithfulness, and LIME against plain lime_image.

    python benchmarks/explain.py --models runs/seed runs/default [--data ../shared/data/chest_xray] [--n 20]

Train the models first (`make bench`, or `pneumolens train ...`). Prints markdown tables. Not part
of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pneumolens.checkpoint import load_model
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.sources import find_split
from pneumolens.data.split import stratified_subset
from pneumolens.explain import METHODS, explain_image
from pneumolens.explain.evaluate import evaluate_methods


def plain_lime_seconds(loaded, paths, n_samples: int = 1000) -> float:
    """Median seconds of lime_image as the seed called it: default quickshift superpixels, batches of
    10, RGB images at their file's size, the model's preprocessing in the classifier function."""
    from lime import lime_image

    cfg = loaded.preprocess

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([preprocess(img[..., 0], cfg) for img in images]))
        with torch.inference_mode():
            p = torch.sigmoid(loaded.model(x)).numpy()
        return np.stack([1 - p, p], axis=1)

    times = []
    for path in paths:
        gray = read_image(path)
        rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float64)
        t0 = time.perf_counter()
        lime_image.LimeImageExplainer(random_state=0).explain_instance(
            rgb, classifier_fn, top_labels=1, num_samples=n_samples, random_seed=0
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["runs/seed", "runs/default"])
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--n", type=int, default=20, help="test images per method (stratified)")
    ap.add_argument("--n-plain", type=int, default=3, help="images for the slow plain lime_image baseline")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    samples = stratified_subset(find_split(args.data, "test"), args.n, seed=0)

    print(f"## Seconds per image (median of {args.n} test images; whole call: decode, lungs, predict, map)\n")
    print("| model | input | " + " | ".join(METHODS) + " | plain `lime_image` (1000 samples) |")
    print("|---|---|" + "---|" * (len(METHODS) + 1))
    for model_path in args.models:
        loaded = load_model(model_path)
        cells = []
        for method in METHODS:
            explain_image(loaded, samples[0].path, method)  # warm-up
            times = [explain_image(loaded, s.path, method).seconds for s in samples]
            cells.append(f"{statistics.median(times):.3f} s")
        plain = plain_lime_seconds(loaded, [s.path for s in samples[: args.n_plain]])
        size = loaded.preprocess.image_size
        print(f"| `{loaded.meta['name']}` | {size} px | " + " | ".join(cells) + f" | {plain:.2f} s |")

    for model_path in args.models:
        loaded = load_model(model_path)
        res = evaluate_methods(loaded, args.data, n=args.n)
        print(f"\n## Faithfulness of `{loaded.meta['name']}` explanations ({args.n} test images)\n")
        print("| method | deletion AUC (lower is better) | insertion AUC (higher is better) | lung fraction |")
        print("|---|---|---|---|")
        for m, r in res.items():
            lung = "-" if r["lung_fraction"] is None else f"{r['lung_fraction']:.3f}"
            print(f"| {m} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | {lung} |")


if __name__ == "__main__":
    main()
