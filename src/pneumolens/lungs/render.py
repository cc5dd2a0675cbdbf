"""Pictures of lung masks: a binary PNG and an overlay a person can judge."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def overlay_image(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.25) -> Image.Image:
    """The X-ray in gray, lungs tinted green, their outline in bright green."""
    g = (np.clip(gray, 0, 1) * 255).astype(np.float32)
    rgb = np.stack([g, g, g], axis=-1)
    m = mask.astype(bool)
    tint = np.array([0, 255, 0], dtype=np.float32)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * tint
    width = max(1, round(min(mask.shape) / 256))
    edge = m & ~ndimage.binary_erosion(m, iterations=width)
    rgb[edge] = tint
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
