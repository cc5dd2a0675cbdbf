"""Lung segmenter: Dice per group, time per image, and flag rates on real chest X-rays.

    python benchmarks/lungs.py [--model src/pneumolens/assets/lungs.safetensors] [--data ../shared/data]

Prints markdown tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pneumolens.config import PreprocessConfig
from pneumolens.data.images import preprocess, read_image
from pneumolens.lungs.flags import GREY_LUNGS_FLAG, check_flags, lung_fraction, plausibility_flags
from pneumolens.lungs.segment import LungSegmenter, shipped_path


def median_ms(fn, items, repeat: int = 1) -> float:
    times = []
    for item in items:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(shipped_path()))
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    data = Path(args.data)
    seg = LungSegmenter.from_file(args.model)
    meta = seg.loaded.meta

    print("## Dice (manual masks at 256x256)\n")
    print("| split | all | Montgomery | Shenzhen | children <= 12 |")
    print("|---|---|---|---|---|")
    for split in ("val", "test"):
        m = meta["metrics"][split]
        cells = [
            f"{m[k]['dice']:.4f} (n={m[k]['n']})" if m[k]["dice"] is not None else "-"
            for k in ("all", "montgomery", "shenzhen", "children_le_12")
        ]
        print(f"| {split} | " + " | ".join(cells) + " |")
    kids = meta["metrics"]["children_all_splits"]
    print(f"\nAll {kids['n']} children ({kids['n_in_train']} seen in training): Dice {kids['dice']:.4f}")
    print(f"Training: {meta['training']['epochs_run']} epochs, {meta['training']['wall_seconds'] / 60:.1f} min.\n")

    test_imgs = (
        sorted((data / "chest_xray/test/NORMAL").iterdir())[:15]
        + sorted((data / "chest_xray/test/PNEUMONIA").iterdir())[:15]
    )
    full_imgs = sorted((data / "fullres_samples").rglob("*.jpeg"))
    grays = [read_image(p) for p in test_imgs]
    full = [read_image(p) for p in full_imgs[:8]]
    print("## Time per image (median, one CPU process)\n")
    print("| step | 224 px Kaggle image | full-resolution original |")
    print("|---|---|---|")
    print(f"| decode | {median_ms(read_image, test_imgs):.1f} ms | {median_ms(read_image, full_imgs[:8]):.1f} ms |")
    lo = lambda g: seg.mask(g, full_size=False)  # noqa: E731
    print(f"| lung mask (segmenter resolution) | {median_ms(lo, grays, 2):.1f} ms | {median_ms(lo, full, 2):.1f} ms |")
    base = PreprocessConfig(image_size=128, channels=1)
    for mode in ("none", "crop", "mask", "soft"):
        cfg = dataclasses.replace(base, lungs=mode)
        fn = lambda g, cfg=cfg: preprocess(g, cfg)  # noqa: E731
        print(
            f"| preprocess `lungs={mode}` to 128 px (mask included) | {median_ms(fn, grays, 2):.1f} ms "
            f"| {median_ms(fn, full, 2):.1f} ms |"
        )

    print("\n## Flags on real chest X-rays (each plausibility flag should be a false alarm)\n")
    print("| images | n | flagged | flags | lung fraction median (range) | `grey_lungs` caution |")
    print("|---|---|---|---|---|---|")
    sets = {
        "Kaggle test NORMAL": sorted((data / "chest_xray/test/NORMAL").iterdir()),
        "Kaggle test PNEUMONIA": sorted((data / "chest_xray/test/PNEUMONIA").iterdir()),
        "full-resolution samples": full_imgs,
    }
    for name, paths in sets.items():
        counts, fracs, flagged, grey = Counter(), [], 0, 0
        for p in paths:
            gray = read_image(p)
            mask = seg.mask(gray, full_size=False)
            flags = plausibility_flags(mask, gray)
            grey += GREY_LUNGS_FLAG in flags
            flags = check_flags(flags)  # the image's plausibility, without the caution
            counts.update(flags)
            flagged += bool(flags)
            fracs.append(lung_fraction(mask))
        flag_text = ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "-"
        print(
            f"| {name} | {len(paths)} | {flagged} ({100 * flagged / len(paths):.1f}%) | {flag_text} "
            f"| {np.median(fracs):.3f} ({min(fracs):.3f}-{max(fracs):.3f}) | {grey} ({100 * grey / len(paths):.1f}%) |"
        )


if __name__ == "__main__":
    main()
