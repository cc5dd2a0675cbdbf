"""Which explanation can be trusted for a given model? Deletion / insertion on its validation films.

    python benchmarks/explain_faithfulness.py src/pneumolens/assets/default.safetensors \
        --data ../shared/data/chest_xray [--n 60] [--seed 1]

Draws ``n`` of the model's own validation films (half normal, half pneumonia; the patient split its
recorded config draws from ``--data``, or a run's ``split.json``) and explains each with Grad-CAM at
the end of every stage of the network, occlusion and LIME, plus a random map as the reference. For
each: mean deletion AUC (lower: the probability falls faster as the most important pixels are
blurred away) and insertion AUC (higher), by class and overall, the paired difference from Grad-CAM
at its default layer with a 95% bootstrap interval over the films, and the median seconds per
image (the whole call). Chooses nothing by itself; the test split is never read. Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from tta import val_paths

from pneumolens.checkpoint import load_model
from pneumolens.explain.attribution import resolve_layer
from pneumolens.explain.evaluate import film_curves


def stage_layers(model) -> list[str]:
    """The output of each stage (``stages.K``) of a pneumolens network, last first."""
    names = [name for name, _ in model.named_modules() if name.count(".") == 1 and name.startswith("stages.")]
    return sorted(names, key=lambda n: int(n.split(".")[1]), reverse=True)


def pick(paths: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    normal = sorted(p for p in paths if "/NORMAL/" in p)
    pneumonia = sorted(p for p in paths if "/PNEUMONIA/" in p)
    return [*rng.choice(normal, n // 2, replace=False), *rng.choice(pneumonia, n - n // 2, replace=False)]


def interval(diff: np.ndarray, seed: int, draws: int = 10_000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a model file or run directory")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    films = pick(val_paths(args.model, args.data), args.n, args.seed)
    default_layer = resolve_layer(loaded.model, None)[0]
    variants = {f"Grad-CAM, {layer}": ("gradcam", {"layer": layer}) for layer in stage_layers(loaded.model)}
    variants |= {"occlusion": ("occlusion", {}), "LIME (1000 samples)": ("lime", {})}
    scores = film_curves(loaded, films, variants, seed=0, rng=np.random.default_rng(args.seed))
    scores["random map"] = scores.pop("random")
    half = args.n // 2
    reference = scores[f"Grad-CAM, {default_layer}"]
    print(
        f"model: {args.model}; {args.n} validation films ({half} normal, {args.n - half} pneumonia), seed {args.seed}"
    )
    print()
    print(
        "| map | deletion AUC (normal / pneumonia / all) | insertion AUC (normal / pneumonia / all) "
        f"| deletion minus Grad-CAM at {default_layer} [95%] | insertion minus it [95%] | seconds per image |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in scores.items():
        d, i = np.array(s["del"]), np.array(s["ins"])
        dd, di = d - np.array(reference["del"]), i - np.array(reference["ins"])
        (dl, dh), (il, ih) = interval(dd, args.seed), interval(di, args.seed)
        sec = f"{statistics.median(s['sec']):.3f}" if s["sec"] else "-"
        print(
            f"| {name} | {d[:half].mean():.3f} / {d[half:].mean():.3f} / {d.mean():.3f} "
            f"| {i[:half].mean():.3f} / {i[half:].mean():.3f} / {i.mean():.3f} "
            f"| {dd.mean():+.3f} [{dl:+.3f}, {dh:+.3f}] | {di.mean():+.3f} [{il:+.3f}, {ih:+.3f}] | {sec} |"
        )
    print()
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
