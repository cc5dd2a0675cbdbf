"""How the model's reading changes when a film is degraded the way real films are, and whether the
plausibility flags say so.

    python benchmarks/robustness.py --data ../shared/data/chest_xray
    python benchmarks/robustness.py --model runs/x --data ../shared/data/chest_xray --films 200

Each validation film of the model (its ``split.json``, or for a bare model file the patient split its
recorded training config draws from ``--data``) is read once, degraded in one way at a time (JPEG
re-compression, lower resolution, noise, blur, exposure and contrast, rotation, mirroring,
inversion, a tighter or a looser frame, saved as a 16-bit PNG) and scored through the public API (``pneumolens.load``:
lung segmentation, preprocessing, the model, its threshold and flags), as a site would send it.
Per degradation: ROC-AUC, sensitivity and specificity at the model's own threshold, the share of
films whose call changed against the clean film, the median change of the probability, the share
of films that get a flag asking to check the image (the ``grey_lungs`` caution left out: it is about
the result, not the input), the share flagged ``noisy`` or ``low_detail`` (the image-quality
measures), and the share of the changed calls that came with a flag, also with the mask-based flags
alone (without ``mirrored``, ``inverted``, ``noisy`` and ``low_detail``, which are judged from the
image).

Only validation is read: this chooses nothing, and test is never touched. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tta import val_paths

import pneumolens
from pneumolens.checkpoint import shipped_model_path
from pneumolens.data.images import read_image
from pneumolens.lungs.flags import INVERTED_FLAG, LOW_DETAIL_FLAG, MIRRORED_FLAG, NOISY_FLAG, check_flags

IMAGE_FLAGS = {MIRRORED_FLAG, INVERTED_FLAG, NOISY_FLAG, LOW_DETAIL_FLAG}  # judged from the image, not the lung mask

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255


def jpeg(quality: int) -> Degrade:
    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        _pil(x).save(buf, format="JPEG", quality=quality)
        return _gray(Image.open(buf))

    return f


def shrink(factor: int) -> Degrade:
    """Sent at 1/factor of each side: a thumbnail or a small export, scaled up only by the model's own resize."""

    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape
        return _gray(_pil(x).resize((max(1, w // factor), max(1, h // factor)), Image.BOX))

    return f


def downsample(factor: int) -> Degrade:
    """Down to 1/factor of each side and back: the detail a smaller detector or a thumbnail loses."""
    return lambda x, rng: _gray(_pil(shrink(factor)(x, rng)).resize(x.shape[::-1], Image.BILINEAR))


def noise(sigma: float) -> Degrade:
    return lambda x, rng: np.clip(x + rng.normal(0, sigma, x.shape), 0, 1).astype(np.float32)


def blur(radius: float) -> Degrade:
    return lambda x, rng: _gray(_pil(x).filter(ImageFilter.GaussianBlur(radius)))


def gamma(g: float) -> Degrade:
    """Exposure: below 1 brightens (an under-penetrated film reads lighter lungs), above 1 darkens."""
    return lambda x, rng: (x**g).astype(np.float32)


def contrast(c: float) -> Degrade:
    return lambda x, rng: np.clip(x.mean() + c * (x - x.mean()), 0, 1).astype(np.float32)


def rotate(degrees: float) -> Degrade:
    """Turned about the centre, the corners filled black as a film rotated digitally would be."""
    return lambda x, rng: _gray(_pil(x).rotate(degrees, resample=Image.BILINEAR, fillcolor=0))


def tilt(degrees: float) -> Degrade:
    """Turned about the centre with the corners filled from the nearest edge pixels, as a patient
    tilted on the detector shows: no black corners."""
    return lambda x, rng: np.clip(ndimage.rotate(x, degrees, reshape=False, order=1, mode="nearest"), 0, 1).astype(
        np.float32
    )


def mirror(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(x[:, ::-1])


def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A MONOCHROME1 film read as MONOCHROME2 (bones dark, lungs light)."""
    return (1 - x).astype(np.float32)


def crop(share: float) -> Degrade:
    """``share`` of each side cut away: a tighter frame (the lungs may touch the edge)."""

    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape
        dy, dx = round(h * share), round(w * share)
        return np.ascontiguousarray(x[dy : h - dy, dx : w - dx])

    return f


def png16(bits: int) -> Degrade:
    """Saved as a 16-bit grayscale PNG holding ``bits`` bits (white at 2**bits - 1, as a detector's
    export), then read back through the file reader."""

    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(x, 0, 1) * (2**bits - 1)).astype(np.uint16)).save(buf, format="PNG")
        return read_image("film.png", data=buf.getvalue())

    return f


def pad(share: float) -> Degrade:
    """A black border of ``share`` of each side: the body smaller in a looser frame."""

    def f(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape
        dy, dx = round(h * share), round(w * share)
        return np.pad(x, ((dy, dy), (dx, dx))).astype(np.float32)

    return f


DEGRADATIONS: dict[str, Degrade] = {
    "JPEG quality 30": jpeg(30),
    "JPEG quality 10": jpeg(10),
    "resolution 1/2": downsample(2),
    "resolution 1/3": downsample(3),
    "resolution 1/4": downsample(4),
    "sent at 1/4 size": shrink(4),
    "noise sd 0.02": noise(0.02),
    "noise sd 0.03": noise(0.03),
    "noise sd 0.05": noise(0.05),
    "blur radius 1 px": blur(1.0),
    "blur radius 1.5 px": blur(1.5),
    "gamma 0.67 (lighter)": gamma(0.67),
    "gamma 1.5 (darker)": gamma(1.5),
    "contrast x0.6": contrast(0.6),
    "rotated 5 deg": rotate(5),
    "rotated 15 deg": rotate(15),
    "rotated 15 deg, no black corners": tilt(15),
    "mirrored": mirror,
    "inverted (MONOCHROME1 misread)": invert,
    "cropped 10% a side": crop(0.10),
    "black border 15% a side": pad(0.15),
    "saved as a 16-bit PNG of 12 bits": png16(12),
    "saved as a 16-bit PNG of 16 bits": png16(16),
}


def degraded(x: np.ndarray, name: str, seed: int) -> np.ndarray:
    """Film ``x`` (float gray in [0, 1]) degraded by ``DEGRADATIONS[name]``; the noise is seeded per film."""
    return DEGRADATIONS[name](x, np.random.default_rng(seed))


def score(model: pneumolens.Model, films: list[np.ndarray], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities, and per film whether a check flag was raised: (N, 3), any check flag, the
    mask-based ones only, and ``noisy`` or ``low_detail``."""
    probs, flagged = [], []
    for i in range(0, len(films), batch):
        for r in model.predict(films[i : i + batch]):
            checks = set(check_flags(r.flags))
            probs.append(r.probability)
            flagged.append((bool(checks), bool(checks - IMAGE_FLAGS), bool(checks & {NOISY_FLAG, LOW_DETAIL_FLAG})))
    return np.array(probs), np.array(flagged, dtype=bool).reshape(-1, 3)


def row(
    name: str, y: np.ndarray, p: np.ndarray, flagged: np.ndarray, threshold: float, clean: np.ndarray | None
) -> dict[str, Any]:
    """The table's figures for one degradation (``clean``: the clean films' probabilities, to compare)."""
    call = p >= threshold
    out: dict[str, Any] = {
        "degradation": name,
        "roc_auc": roc_auc_score(y, p),
        "sensitivity": call[y == 1].mean(),
        "specificity": (~call[y == 0]).mean(),
        "flagged": flagged[:, 0].mean(),
        "flagged_quality": flagged[:, 2].mean(),
    }
    if clean is not None:
        changed = call != (clean >= threshold)
        out |= {
            "changed": changed.mean(),
            "median_dp": float(np.median(np.abs(p - clean))),
            "changed_flagged": flagged[changed, 0].mean() if changed.any() else float("nan"),
            "changed_flagged_masks": flagged[changed, 1].mean() if changed.any() else float("nan"),
        }
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| degradation | ROC-AUC | sensitivity | specificity | calls changed | median abs. change of p "
        "| flagged | `noisy` or `low_detail` | changed calls flagged | the same, mask flags only |"
        "\n|---|---|---|---|---|---|---|---|---|---|"
    )

    def pct(v: float | None) -> str:
        return "-" if v is None or v != v else f"{100 * v:.1f}%"

    lines = [head]
    for r in rows:
        dp = "-" if "median_dp" not in r else f"{r['median_dp']:.3f}"
        lines.append(
            f"| {r['degradation']} | {r['roc_auc']:.4f} | {pct(r['sensitivity'])} | {pct(r['specificity'])} "
            f"| {pct(r.get('changed'))} | {dp} | {pct(r['flagged'])} | {pct(r['flagged_quality'])} "
            f"| {pct(r.get('changed_flagged'))} | {pct(r.get('changed_flagged_masks'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run directory (default: the shipped model)")
    ap.add_argument("--data", required=True, help="the dataset root the model was trained on (its validation split)")
    ap.add_argument("--films", type=int, default=0, help="at most this many validation films (0: all)")
    ap.add_argument("--only", nargs="*", default=None, help="degradations to run (names as in the table)")
    args = ap.parse_args()
    t0 = time.time()
    path = Path(args.model) if args.model else shipped_model_path()
    model = pneumolens.load(path)
    paths = val_paths(path, args.data)
    if args.films:
        paths = paths[:: max(1, len(paths) // args.films)][: args.films]
    y = np.array([int("PNEUMONIA" in Path(p).parent.name.upper()) for p in paths])
    films = [read_image(p) for p in paths]
    threshold = model.loaded.threshold
    names = args.only if args.only is not None else list(DEGRADATIONS)
    if unknown := [n for n in names if n not in DEGRADATIONS]:
        raise SystemExit(f"unknown degradation(s) {unknown}; valid: {list(DEGRADATIONS)}")
    clean, clean_flagged = score(model, films)
    rows = [row("none (the films as stored)", y, clean, clean_flagged, threshold, None)]
    for name in names:
        p, flagged = score(model, [degraded(x, name, i) for i, x in enumerate(films)])
        rows.append(row(name, y, p, flagged, threshold, clean))
    print(f"model: {path}; {len(paths)} validation films ({int(y.sum())} pneumonia); threshold {threshold:.3f}")
    print(table(rows))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
