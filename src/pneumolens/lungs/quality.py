"""Does the film hold the detail and the quiet the model was trained on? Two measures and their flags.

Both are taken on the film resized to ``SIZE`` x ``SIZE`` (bilinear, as the model's own
preprocessing resizes), so a large film is judged by what survives at the scale the model reads, and
a small one by what an upscale to that scale can give it.

``noise_level``: Immerkaer's estimate of the standard deviation of white noise (grayscale in [0, 1]),
from the film's response to a mask that cancels planes and ramps. ``detail``: the spread (standard
deviation) of the finest scale (the film minus its Gaussian blur at 1 px) over that of the next
(blur at 1 px minus blur at 3 px); a thumbnail scaled up, or a blurred film, has lost the first and
kept the second.

The bounds were chosen on the shipped model's validation films (746; ``benchmarks/robustness.py``),
where the model's specificity starts to fall (94.8% as stored): ``noisy`` lies between the noise
levels that added noise of standard deviation 0.02 (specificity 95.3%) and 0.03 (93.8%) give, and
flags every film of the second; ``low_detail`` flags none of the films as stored, 16% of them at
half resolution (95.8%), 81% at a third (90.1%) and all at a quarter (81.2%) or blurred by 1.5 px
(92.2%). No film of the Kaggle training split, of the NLM adult sets or of the full-resolution
samples is flagged (README, Reliability).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pneumolens.lungs.flags import LOW_DETAIL_FLAG, NOISY_FLAG

SIZE = 224
NOISE_MAX = 0.025  # validation films: 0.0015-0.0040 as stored, 0.017-0.021 with noise of sd 0.02, 0.026-0.031 with 0.03
DETAIL_MIN = 0.30  # validation films: 0.40-0.76 as stored, 0.26-0.42 at half resolution, 0.23-0.29 at a quarter


def standard(gray: np.ndarray) -> np.ndarray:
    """The film (H, W) in [0, 1] as float32 at SIZE x SIZE."""
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), np.float32)


def noise_level(x: np.ndarray) -> float:
    """Estimated standard deviation of the white noise of ``x`` (a film at SIZE px: ``standard``; Immerkaer 1996)."""
    r = x[:-2] - 2 * x[1:-1] + x[2:]  # the mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]], as two second differences
    r = r[:, :-2] - 2 * r[:, 1:-1] + r[:, 2:]  # its response to white noise has 6x the noise's sd
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6)


def detail(x: np.ndarray) -> float:
    """Finest-scale over next-scale standard deviation of ``x`` (a film at SIZE px: ``standard``): about
    0.54 for a sharp film, 0.25 for one a quarter of its size."""
    fine_blur = ndimage.gaussian_filter(x, 1.0, truncate=3.0)
    coarse_blur = ndimage.gaussian_filter(x, 3.0, truncate=3.0)
    mid = float((fine_blur - coarse_blur).std())
    return float((x - fine_blur).std()) / mid if mid > 0 else 0.0


def quality_measures(gray: np.ndarray) -> dict[str, float]:
    """``noise`` and ``detail`` of a grayscale film (H, W) in [0, 1] at any resolution."""
    x = standard(gray)
    return {"noise": noise_level(x), "detail": detail(x)}


def quality_flags(gray: np.ndarray, measures: dict[str, float] | None = None) -> list[str]:
    """``noisy`` and / or ``low_detail`` for a grayscale film (H, W) in [0, 1] at any resolution
    (``measures``: its ``quality_measures``, when already taken)."""
    m = measures or quality_measures(gray)
    flags = []
    if m["noise"] > NOISE_MAX:
        flags.append(NOISY_FLAG)
    if m["detail"] < DETAIL_MIN:
        flags.append(LOW_DETAIL_FLAG)
    return flags
