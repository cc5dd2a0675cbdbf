"""Is this a frontal chest X-ray? Plausibility flags from the lung mask.

Bounds come from the 701 manual masks of the training data (at 128x128): lung area 11.2-43.4% of
the image (1st-99th percentile 13.7-39.2%), and the mask touches the image edge on 0% of the
perimeter for 99% of films (at most 7.6%). The bounds below leave room for pediatric films, whose
smaller lungs sit in a wider field of view.
"""

from __future__ import annotations

import numpy as np

MIN_LUNG_AREA = 0.01  # below this, nothing lung-like was found
AREA_RANGE = (0.06, 0.55)  # half the smallest and 1.25x the largest manual mask's share
MAX_EDGE_CONTACT = 0.04  # share of the image perimeter the lungs may touch

MESSAGES = {
    "no_lungs_found": "no lung fields found: this does not look like a frontal chest X-ray",
    "lungs_cut_off": "the lung fields touch the image border: the film may be cropped or rotated",
    "unusual_lung_area": "the lung fields cover an unusual share of the image: check the view and framing",
}


def lung_fraction(mask: np.ndarray) -> float:
    return float(np.asarray(mask, bool).mean())


def plausibility_flags(mask: np.ndarray) -> list[str]:
    """Flags for a boolean lung mask; an empty list means the mask looks like two normal lung fields."""
    m = np.asarray(mask, bool)
    area = m.mean()
    if area < MIN_LUNG_AREA:
        return ["no_lungs_found"]
    flags = []
    perimeter = np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
    if perimeter.mean() > MAX_EDGE_CONTACT:
        flags.append("lungs_cut_off")
    if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
        flags.append("unusual_lung_area")
    return flags


def describe(flags: list[str]) -> str | None:
    """One sentence for a person, or None when there is nothing to say."""
    return "; ".join(MESSAGES[f] for f in flags) or None
