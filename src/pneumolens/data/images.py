"""Reading X-ray files and turning them into model inputs.

:func:`preprocess` is the only path from pixels to a model input: training, evaluation and
prediction all call it, so a model never sees a different pipeline than the one it learned on.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumolens.config import PreprocessConfig
from pneumolens.data.dicom import OutOfScope, dicom_to_gray, is_dicom

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".tif", ".tiff", ".dcm", ".dicom"})
# Real X-rays are at most a few thousand pixels a side; a header claiming more is refused
# before any pixel is decoded (decompression-bomb guard).
MAX_PIXELS = 8_000 * 8_000
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how stored pixels are turned for display
MIN_SIDE = 8
OUT_OF_SCOPE = "out of scope"  # before the reason, in the audit trail, of a film the model is not for

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class ImageReadError(ValueError):
    """A file that cannot be used as an X-ray; the message names the file and the reason.
    ``out_of_scope``: a readable DICOM film whose header says it is not a frontal chest X-ray
    (``pneumolens.data.scope``), which a DICOM node acknowledges and leaves unread."""

    def __init__(self, path: str | os.PathLike[str], reason: str, out_of_scope: bool = False) -> None:
        self.path = str(path)
        self.reason = reason
        self.out_of_scope = out_of_scope
        super().__init__(f"{self.path}: {reason}")

    @property
    def audited(self) -> str:
        """The reason as the audit trail keeps it: an out-of-scope film's marked so (``OUT_OF_SCOPE``),
        for the drift check to count it apart from a broken file."""
        return f"{OUT_OF_SCOPE}: {self.reason}" if self.out_of_scope else self.reason


def white_of(values: np.ndarray) -> float:
    """The white of an integer image without a display window (a 16-bit PNG or TIFF): the top of the smallest
    bit depth, 8 bits or more, that holds its largest pixel. A 12-bit detector's film saved in a 16-bit
    PNG, as exports often are, reads with 4,095 as white, not 65,535: read as 16 bits it would come
    out almost black: the shipped model called 77.1% of the normal validation films pneumonia when
    they came so (specificity 22.9% against 94.8%; ``benchmarks/robustness.py``, "saved as a 16-bit
    PNG of 12 bits", before 2026-12-07). Black stays 0, as in an 8-bit file: no stretch."""
    peak = float(values.max()) if values.size else 0.0
    bits = max(8, int(np.ceil(np.log2(max(peak, 0.0) + 1.0))))
    return float(2**bits - 1)


def _to_gray_float(img: Image.Image, path: str | os.PathLike[str]) -> np.ndarray:
    """Any supported PIL mode -> (H, W) float32 in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        return np.clip(arr / white_of(arr), 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not np.isfinite(arr).all():
            raise ImageReadError(path, "float image contains NaN or infinite pixels")
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on black: transparent padding is background, not tissue.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if mode != "L":
        img = img.convert("L")  # CMYK, P, RGB, 1 -> 8-bit luma
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike[str], data: bytes | None = None) -> np.ndarray:
    """Decode a JPEG, PNG, TIFF or DICOM file as grayscale (H, W) float32 in [0, 1].

    ``data`` gives the file's bytes (an upload); ``path`` then only names it in messages.

    Raises:
        ImageReadError: the file is missing, unreadable, not an image, truncated, too small or
            claims an implausible size.
    """
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        head = data[:132] if data is not None else _head(path)
        if is_dicom(head, path.name):
            try:
                return dicom_to_gray(data if data is not None else path, MAX_PIXELS, MIN_SIDE)
            except ValueError as e:
                raise ImageReadError(path, str(e), out_of_scope=isinstance(e, OutOfScope)) from None
        with warnings.catch_warnings():
            # PIL warns from 89 Mpx; our own limit below is stricter and refuses instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else path)
        with img:
            _check_size(path, *img.size)
            img.load()
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # a photo's or phone's export: upright, as viewers show it
                return _to_gray_float(ImageOps.exif_transpose(img), path)
            return _to_gray_float(img, path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"header claims too many pixels, refused before decoding ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a JPEG, PNG, TIFF or DICOM image (unrecognised content)") from None
    except (SyntaxError, ValueError) as e:
        # PIL reports truncated JPEGs, bad PNG CRCs and broken headers as OSError/SyntaxError.
        raise ImageReadError(path, f"corrupt or truncated image ({e})") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageReadError(path, "symbolic link loop (the link points, in the end, at itself)") from None
        if e.errno not in (None, errno.EIO, errno.EINVAL) and e.filename is not None:
            raise ImageReadError(path, f"cannot be read ({os.strerror(e.errno)})") from None
        raise ImageReadError(path, f"corrupt or truncated image ({e})") from None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(132)


def _check_size(path: Path, w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise ImageReadError(
            path, f"header claims {w}x{h} pixels, above the {MAX_PIXELS:,} limit; refused before decoding"
        )
    if min(w, h) < MIN_SIDE:
        raise ImageReadError(path, f"image is {w}x{h} pixels, smaller than {MIN_SIDE} px a side")


def preprocess(gray: np.ndarray, cfg: PreprocessConfig, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Grayscale (H, W) in [0, 1] -> model input (C, S, S) float32 in [0, 1].

    The image is resized to a square without keeping the aspect ratio, as the seed did. With
    ``cfg.lungs`` other than "none", the region outside the lung fields is cropped away or
    suppressed; ``lung_mask`` (the segmenter's low-resolution mask) is computed when not given.
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {gray.shape}")
    weights = None
    if cfg.lungs != "none":
        from pneumolens.lungs import preprocess as lung_pre

        if lung_mask is None:
            from pneumolens.lungs.segment import LungSegmenter

            lung_mask = LungSegmenter.shipped().mask(gray, full_size=False)
        if lung_mask.any():
            if cfg.lung_gamma > 0:  # exposure normalised on the lungs, on the whole film, before the crop
                gray = np.clip(gray, 0.0, 1.0) ** lung_pre.lung_gamma(gray, lung_mask, cfg.lung_gamma)
            if cfg.lungs in ("crop", "crop_soft"):
                top, bottom, left, right = lung_pre.crop_box(lung_mask, cfg.lung_margin, gray.shape)
                gray = gray[top:bottom, left:right]
            if cfg.lungs != "crop":
                weights = lung_pre.weight_map(lung_mask, cfg.lungs, cfg.lung_margin, cfg.soft_floor, cfg.image_size)
    size = cfg.image_size
    if gray.shape != (size, size):
        img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
        gray = np.asarray(img.resize((size, size), _RESAMPLE[cfg.interpolation]), dtype=np.float32)
    gray = np.clip(gray, 0.0, 1.0)
    if cfg.equalize == "clahe":
        from skimage.exposure import equalize_adapthist

        # at the model's resolution: cheap, and the same tiles whatever the file's size
        gray = equalize_adapthist(gray, kernel_size=max(8, size // 8), clip_limit=cfg.clahe_clip).astype(np.float32)
    if weights is not None:
        gray = gray * weights
    out = gray[None]  # (1, S, S)
    if cfg.channels != 1:
        out = np.repeat(out, cfg.channels, axis=0)  # (C, S, S)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_input(path: str | os.PathLike[str], cfg: PreprocessConfig) -> np.ndarray:
    """Read a file and preprocess it: the single file -> model-input path."""
    return preprocess(read_image(path), cfg)
