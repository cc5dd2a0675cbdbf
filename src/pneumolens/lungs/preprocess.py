"""Lung-aware preprocessing: suppress what lies outside the lung fields before the classifier.

Modes (``PreprocessConfig.lungs``):

- ``none``: the whole image.
- ``crop``: crop to the bounding box of the dilated lung mask, then resize.
- ``mask``: zero everything outside the convex hull of the dilated mask. The hull keeps the
  mediastinum and the lung behind the heart, and dilation keeps dense consolidation at the lung
  border that the aerated-lung training masks can cut away.
- ``soft``: like ``mask`` but attenuates (to ``soft_floor``) with a smooth edge instead of zeroing.
- ``crop_soft``: ``crop``, then attenuate (to ``soft_floor``, smooth edge) what lies outside the
  dilated lungs themselves (not their hull): the mediastinum, heart, spine and sternum between
  them and the diaphragm below are dimmed but still seen.

With ``lung_gamma`` (any mode but ``none``) the film's exposure is first normalised on the lungs:
it is raised to the power that brings the median inside the lung mask to the given value.

All geometry happens on the segmenter's low-resolution mask; only the final crop or multiply
touches the full image. When no lungs are found the image passes unchanged (the flags say so).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pneumolens.lungs.masks import bounding_box, convex_hull, dilate

MODES = ("none", "crop", "mask", "soft", "crop_soft")


def crop_box(mask_lowres: np.ndarray, margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box of the dilated mask, scaled to an image of ``shape`` (top, bottom, left, right)."""
    box = bounding_box(dilate(mask_lowres, margin))
    if box is None:
        return None
    sy, sx = shape[0] / mask_lowres.shape[0], shape[1] / mask_lowres.shape[1]
    top, bottom, left, right = (int(box[0] * sy), round(box[1] * sy), int(box[2] * sx), round(box[3] * sx))
    return top, max(top + 1, bottom), left, max(left + 1, right)


def read_box(mask_lowres: np.ndarray, lungs: str, margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of an image of ``shape`` that the model reads (top, bottom, left, right): the crop box
    for the ``crop`` modes when lungs were found, else the whole image (the other modes dim what lies
    outside the lungs but still show it)."""
    box = crop_box(mask_lowres, margin, shape) if lungs in ("crop", "crop_soft") and mask_lowres.any() else None
    return box or (0, shape[0], 0, shape[1])


def weight_map(mask_lowres: np.ndarray, mode: str, margin: float, soft_floor: float, size: int) -> np.ndarray:
    """Per-pixel multiplier (size, size) in [0, 1] for the ``mask``, ``soft`` and ``crop_soft`` modes
    (for ``crop_soft``, over the crop box)."""
    grown = dilate(mask_lowres, margin)
    keep = (grown if mode == "crop_soft" else convex_hull(grown)).astype(np.float32)
    if mode in ("soft", "crop_soft"):
        keep = ndimage.gaussian_filter(keep, sigma=max(1.0, margin * min(keep.shape) / 2))
        keep = soft_floor + (1.0 - soft_floor) * keep
    if mode == "crop_soft" and (box := bounding_box(grown)) is not None:
        keep = keep[box[0] : box[1], box[2] : box[3]]
    img = Image.fromarray(keep, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


GAMMA_RANGE = (0.5, 2.0)


def lung_median(gray: np.ndarray, mask: np.ndarray) -> float | None:
    """The median of ``gray`` inside a lung mask of any resolution (nearest-neighbour scaled to the
    image); None when the mask is empty."""
    if mask.shape != gray.shape:
        mask = np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).resize(gray.shape[::-1], Image.Resampling.NEAREST)
        )
    inside = gray[mask > 0]
    return float(np.median(inside)) if inside.size else None


def lung_gamma(gray: np.ndarray, mask_lowres: np.ndarray, target: float) -> float:
    """The exponent g that brings the median of ``gray`` inside the lungs to ``target`` (m ** g =
    target), clipped to ``GAMMA_RANGE``; 1 when the mask is empty or the median is 0 or 1."""
    median = lung_median(gray, mask_lowres)
    if median is None or not 0 < median < 1:
        return 1.0
    return float(np.clip(np.log(target) / np.log(median), *GAMMA_RANGE))
