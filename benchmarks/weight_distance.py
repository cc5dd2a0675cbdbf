"""How far have fine-tunes moved from their start? A diagnostic for weight averages (rounds 31-33).

    python benchmarks/weight_distance.py --start src/pneumolens/assets/default.safetensors runs/v31/ft1 runs/v31/soup

Prints, for each model, the L2 norm of its weights minus the start's over every weight but the
batch-norm statistics, divided by the start's norm, with each file's folded temperature taken out
first (so that calibration does not count as movement). Chooses nothing; reads no images.
"""

from __future__ import annotations

import argparse

import torch

from pneumolens.checkpoint import load_model
from pneumolens.evaluation.calibration import unfold_temperature


def flat_weights(path: str | None) -> torch.Tensor:
    loaded = load_model(path)
    unfold_temperature(loaded.model, loaded.meta.get("calibration", {}))
    state = loaded.model.state_dict()
    return torch.cat([v.flatten().float() for k, v in state.items() if v.is_floating_point() and "running_" not in k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default=None, help="the start's model file or run (default: the shipped model)")
    ap.add_argument("models", nargs="+", help="model files or runs of the same architecture")
    args = ap.parse_args()
    start = flat_weights(args.start)
    print("| model | distance from the start (share of its norm) |\n|---|---|")
    for path in args.models:
        w = flat_weights(path)
        if w.shape != start.shape:
            raise SystemExit(f"{path}: another architecture than the start")
        print(f"| `{path}` | {float((w - start).norm() / start.norm()):.1%} |")


if __name__ == "__main__":
    main()
