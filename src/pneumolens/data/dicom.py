"""DICOM chest X-rays -> grayscale [0, 1], as a radiologist's viewer would show them.

Modality LUT (rescale slope / intercept), then VOI LUT or window, then MONOCHROME1 inverted so that
air is always dark. 8-bit pixels with neither map nor window are taken as display values (/255), the
same as a JPEG of the image; anything else is stretched from its minimum to its maximum. Only
single-frame grayscale images are accepted. Patient identifiers are never read into anything
pneumolens returns or logs: only pixel data and display attributes are used.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def is_dicom(head: bytes, name: str = "") -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return head[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def dicom_to_gray(
    source: str | os.PathLike[str] | bytes | io.BufferedIOBase, max_pixels: int, min_side: int = 8
) -> np.ndarray:
    """Decode a DICOM file (path, bytes or file object) to (H, W) float32 in [0, 1].

    The size in the header is checked against ``max_pixels`` before any pixel is decoded.

    Raises:
        ValueError: no pixel data, several frames, colour, or undecodable pixels; ``name`` is in the message.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds:
        raise ValueError("no pixel data in this DICOM file")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"multi-frame DICOM ({ds.NumberOfFrames} frames); a single radiograph is expected")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ValueError("colour DICOM; a grayscale radiograph is expected")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ValueError(f"header claims {cols}x{rows} pixels, above the {max_pixels:,} limit; refused before decoding")
    if min(rows, cols) < min_side:
        raise ValueError(f"image is {cols}x{rows} pixels, smaller than {min_side} px a side")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken or truncated pixel data
        raise ValueError(f"DICOM pixel data cannot be decoded ({type(e).__name__}: {e})") from None
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    rescaled = float(getattr(ds, "RescaleSlope", 1) or 1) != 1 or float(getattr(ds, "RescaleIntercept", 0) or 0) != 0
    arr = apply_modality_lut(arr, ds)
    if windowed:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("DICOM pixel data contains non-finite values")
    if not windowed and not rescaled and int(getattr(ds, "BitsStored", 16) or 16) <= 8 and arr.min() >= 0:
        lo, hi = 0.0, 255.0  # 8-bit pixels are display values already, as in a JPEG of the same image
    else:  # no display window to follow: stretch the stored range, as a viewer's auto-window does
        lo, hi = float(arr.min()), float(arr.max())
    gray = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        gray = 1.0 - gray  # MONOCHROME1: high values are dark
    return gray.astype(np.float32)
