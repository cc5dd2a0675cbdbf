"""The map's strongest regions as outlines on the image: what a viewer draws instead of a heatmap.

The DICOM node's Structured Report (image regions) and presentation state (graphics), the API's
``regions`` and ``explain --json`` all carry these outlines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.5  # an outline goes round the map where it is at least this share of its peak
MAX_REGIONS = 3
MAX_SIDE = 512  # outlines are traced on the map scaled down to this, then scaled back: smooth and fast


@dataclass
class Outline:
    points: np.ndarray  # (n, 2) image pixel coordinates (column, row) of a closed polyline, first == last
    share: float  # of the map's positive (supporting) attribution inside it


def map_outlines(heatmap: np.ndarray, level: float = LEVEL, max_regions: int = MAX_REGIONS) -> list[Outline]:
    """Closed outlines of the regions where ``heatmap`` (H, W; > 0 supports the call) is at least
    ``level`` times its positive peak, the ``max_regions`` holding most of the support first. Points
    are DICOM image coordinates: (column, row), the top left corner of the image at (0, 0), a pixel's
    centre at +0.5. An empty list when nothing supports the call."""
    from skimage.measure import approximate_polygon, find_contours, label, regionprops

    positive = np.clip(np.asarray(heatmap, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    if peak <= 0:
        return []
    step = max(1, int(np.ceil(max(positive.shape) / MAX_SIDE)))
    small = positive[::step, ::step]
    regions = label(small >= level * peak)
    total = float(small.sum())
    outlines = []
    for region in regionprops(regions, intensity_image=small):
        inside = np.pad(regions == region.label, 1)  # padded: a region on the border still closes
        (contour, *_) = sorted(find_contours(inside.astype(np.float32), 0.5), key=len, reverse=True)
        contour = approximate_polygon(contour, tolerance=0.75)
        # back from the padding, then from the scaled-down grid, whose pixel i stands for the image's
        # pixels i * step to (i + 1) * step: a contour at c (pixel centres at integers) lies at c * step + step / 2
        rows, cols = (contour[:, 0] - 1) * step + step / 2, (contour[:, 1] - 1) * step + step / 2
        h, w = positive.shape
        points = np.stack([np.clip(cols, 0, w), np.clip(rows, 0, h)], axis=1)
        share = float(region.image_intensity[region.image].sum()) / total
        outlines.append(Outline(points=points.astype(np.float32), share=share))
    return sorted(outlines, key=lambda o: o.share, reverse=True)[:max_regions]
