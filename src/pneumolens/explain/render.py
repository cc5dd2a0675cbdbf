"""Pictures of explanations: a heatmap over the X-ray, or LIME's green/red superpixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from pneumolens.explain.explainer import Explanation  # noqa: E402

MAX_SIDE = 1024  # pictures of full-resolution films are scaled down to this
MIN_SIDE = 512  # and small inputs up, so the caption fits
CAPTION = "decision support only, not a diagnosis"


def _fit(img: Image.Image) -> Image.Image:
    scale = min(MAX_SIDE / max(img.size), max(1.0, MIN_SIDE / min(img.size)))
    if scale == 1:
        return img
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


def heatmap_overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8: the X-ray with the positive part of ``heatmap`` in the 'jet' colours, weighted by strength."""
    g = np.clip(gray, 0, 1)[..., None].repeat(3, axis=-1)
    h = np.clip(heatmap, 0, 1)
    colour = colormaps["jet"](h)[..., :3]
    w = alpha * h[..., None]
    return ((1 - w) * g * 255 + w * colour * 255).astype(np.uint8)


def lime_overlay(gray: np.ndarray, segments: np.ndarray, weights: np.ndarray, top: int = 8) -> np.ndarray:
    """RGB uint8 in the seed's style: the ``top`` superpixels for the predicted class green, the
    ``top`` against it red, all superpixel borders in yellow."""
    h, w = gray.shape
    seg = np.asarray(Image.fromarray(segments.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
    rgb = (np.clip(gray, 0, 1)[..., None].repeat(3, axis=-1) * 255).astype(np.float32)
    order = np.argsort(weights)
    pos = [k for k in order[::-1][:top] if weights[k] > 0]
    neg = [k for k in order[:top] if weights[k] < 0]
    for ks, colour in ((pos, (0, 200, 0)), (neg, (220, 0, 0))):
        m = np.isin(seg, ks)
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(colour, dtype=np.float32)
    rgb[find_boundaries(seg, mode="inner")] = (255, 220, 0)
    return rgb.astype(np.uint8)


def overlay_array(e: Explanation) -> np.ndarray:
    """RGB uint8 of the explanation over its X-ray: LIME's superpixels, or the heatmap."""
    if e.method == "lime":
        return lime_overlay(e.image, e.segments, e.segment_weights)
    return heatmap_overlay(e.image, e.heatmap)


def explanation_image(e: Explanation) -> Image.Image:
    """The picture `pneumolens explain --out` writes: overlay plus a caption bar."""
    img = _fit(Image.fromarray(overlay_array(e)))
    bar = 34
    canvas = Image.new("RGB", (img.width, img.height + bar), (0, 0, 0))
    canvas.paste(img, (0, bar))
    d = ImageDraw.Draw(canvas)
    lung = "n/a" if e.lung_fraction is None else f"{e.lung_fraction:.2f}"
    d.text((4, 3), f"{e.method}: explains {e.label}, P(pneumonia)={e.probability:.3f}, in lungs {lung}", fill="white")
    d.text((4, 18), CAPTION + (f"; flags: {', '.join(e.flags)}" if e.flags else ""), fill=(255, 210, 0))
    return canvas
