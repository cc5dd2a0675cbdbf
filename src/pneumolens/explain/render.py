"""Pictures of explanations: a heatmap over the X-ray, or LIME's green/red superpixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from pneumolens.explain.explainer import Explanation  # noqa: E402

MAX_SIDE = 1024  # pictures of full-resolution films are scaled down to this
MIN_SIDE = 512  # and small inputs up, so the caption fits
CAPTION = "decision support only, not a diagnosis"


def _fitted_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of a picture of an image this size: scaled down to ``MAX_SIDE`` or up to ``MIN_SIDE``."""
    scale = min(MAX_SIDE / max(width, height), max(1.0, MIN_SIDE / min(width, height)))
    return (width, height) if scale == 1 else (round(width * scale), round(height * scale))


def _resized(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """A float (H, W) array at ``size`` (width, height)."""
    if (a.shape[1], a.shape[0]) == size:
        return a
    return np.asarray(Image.fromarray(np.asarray(a, dtype=np.float32), mode="F").resize(size, resample))


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
    """The picture `pneumolens explain --out` writes: overlay plus a caption bar. A film larger than the
    picture is scaled down, with its map, before they are blended: blending a full-resolution film
    first took up to half a second of the DICOM node's and the web app's time per film."""
    height, width = e.image.shape
    size = _fitted_size(width, height)
    if size[0] < width:
        gray = _resized(e.image, size, Image.Resampling.LANCZOS)
        if e.method == "lime":
            img = Image.fromarray(lime_overlay(gray, e.segments, e.segment_weights))
        else:  # bilinear: the map ends sharply at the edge of what the model read, where Lanczos would ring
            img = Image.fromarray(heatmap_overlay(gray, _resized(e.heatmap, size, Image.Resampling.BILINEAR)))
    else:  # a small film: blended at its own size, then scaled up (LIME's borders keep their weight)
        img = Image.fromarray(overlay_array(e))
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
    font = caption_font(img.width)
    caption = wrapped(CAPTION + (f"; flags: {', '.join(e.flags)}" if e.flags else ""), img.width - 8, font)
    step = line_step(font)
    bar = 6 + step * (1 + len(caption))  # 40 px for a caption of one line on a 512-px picture
    canvas = Image.new("RGB", (img.width, img.height + bar), (0, 0, 0))
    canvas.paste(img, (0, bar))
    d = ImageDraw.Draw(canvas)
    lung = "n/a" if e.lung_fraction is None else f"{e.lung_fraction:.2f}"
    title = f"{e.method}: explains {e.label}, P(pneumonia)={e.probability:.3f}, in lungs {lung}"
    d.text((4, 3), title, fill="white", font=font)
    for i, line in enumerate(caption, start=1):
        d.text((4, 3 + step * i), line, fill=(255, 210, 0), font=font)
    return canvas


def caption_font(width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The caption's font for a picture ``width`` pixels wide: a fortieth of the width (13 px at
    least), so that it stays legible where the picture is shown smaller than it is, as the web page
    shows a 1024-px picture of a full-resolution film at under half its size."""
    return ImageFont.load_default(size=max(13, width // 40))


def line_step(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Pixels from one caption line to the next."""
    return round(getattr(font, "size", 11)) + 4


def wrapped(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (PIL's default when None), broken
    between words (a word wider than that stands on a line of its own), so that no flag runs off a
    picture: this caption bar's and the DICOM node's (``integration.dicom_node.burn_in``)."""
    font = font or ImageFont.load_default()
    lines = [""]
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines[-1] else word
        if lines[-1] and font.getlength(joined) > width:
            lines.append(word)
        else:
            lines[-1] = joined
    return lines
