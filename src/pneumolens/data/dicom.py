"""DICOM chest X-rays -> grayscale [0, 1], as a radiologist's viewer would show them.

Modality LUT (rescale slope / intercept), then VOI LUT or window, then MONOCHROME1 inverted so that
air is always dark. 8-bit pixels with neither map nor window are taken as display values (/255), the
same as a JPEG of the image; anything else is stretched from its minimum to its maximum. Only
single-frame grayscale images are accepted. Compressed pixel data is decoded by pydicom's plugins:
RLE and deflate natively, JPEG baseline and JPEG 2000 by Pillow, JPEG extended and lossless
(process 14) and JPEG-LS by pylibjpeg-libjpeg. Patient identifiers are never read into anything
pneumolens returns or logs: only pixel data and display attributes are used, and, when films are
listed for training or evaluation, the Patient ID (with its issuer) to tell which films belong to
one patient; :func:`patient_identity` hands it to the caller, which keeps only a number for it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from pneumolens.data.scope import outside_scope

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def _keep_header_values_out_of_logs() -> None:
    """pydicom's and highdicom's logs and warnings quote header values ("Invalid value for VR DA:
    '19X01231'", a person name "unlikely to represent the intended name", the UID of the image a
    report is about): a malformed birth date or a name would reach pneumolens' log. They are
    silenced; pneumolens says in its own words what went wrong."""
    for name in ("pydicom", "highdicom"):  # the level holds for their child loggers too
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"(pydicom|highdicom)(\.|$)")


_keep_header_values_out_of_logs()


class DicomRefused(ValueError):
    """A readable DICOM file that is not a usable radiograph; the message says why."""


class OutOfScope(DicomRefused):
    """A DICOM file whose header says it is not a frontal chest radiograph (``pneumolens.data.scope``)."""


def is_dicom(head: bytes, name: str = "") -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return head[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def patient_identity(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(Issuer of Patient ID, Patient ID) of a DICOM file, read from the header only; None when the
    file has no Patient ID, an empty one, or a header that does not parse (the file's own error is
    reported when it is read). For grouping a patient's films; never to be logged or stored."""
    import pydicom

    try:
        tags = ["PatientID", "IssuerOfPatientID"]
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=tags)
        pid = str(ds.get("PatientID", "") or "").strip()
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    except Exception:  # noqa: BLE001 - a corrupt header raises almost any type; check_headers names it
        return None
    return (issuer, pid) if pid else None


def header_values(data: bytes, keywords: list[str]) -> list[str] | None:
    """The text of ``keywords`` in a DICOM file's header ("" where absent), read without the pixels;
    None for other files or a header that does not parse."""
    ds = header_dataset(data, keywords)
    if ds is None:
        return None
    try:
        return [str(ds.get(k, "") or "").strip() for k in keywords]
    except Exception:  # noqa: BLE001 - a malformed value raises almost any type; the image's own error is reported
        return None


def device_of(data: bytes) -> str | None:
    """The device's make and model (``Manufacturer ManufacturerModelName``) of a DICOM file's bytes,
    from the header only; None for other files, a header without them or one that does not parse.
    It names the detector, not the patient (so the audit trail may keep it, to tell which device's
    films drift)."""
    values = header_values(data, ["Manufacturer", "ManufacturerModelName"])
    if values is None:
        return None
    return " ".join(values).strip()[:128] or None


def uids_of(data: bytes) -> tuple[str | None, str | None]:
    """The Study and SOP Instance UIDs of a DICOM file's bytes, from the header only; (None, None) for
    other files or a header that does not parse."""
    values = header_values(data, ["StudyInstanceUID", "SOPInstanceUID"])
    return (values[0] or None, values[1] or None) if values else (None, None)


def dicom_to_gray(
    source: str | os.PathLike[str] | bytes | io.BufferedIOBase, max_pixels: int, min_side: int = 8
) -> np.ndarray:
    """Decode a DICOM file (path, bytes or file object) to (H, W) float32 in [0, 1].

    The size in the header is checked against ``max_pixels`` before any pixel is decoded.

    Raises:
        ValueError: no pixel data, several frames, colour, or undecodable pixels; ``name`` is in the message.
    """
    import pydicom

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source, force=True)
        return _pixels_to_gray(ds, max_pixels, min_side)
    except DicomRefused:
        raise
    except Exception as e:  # noqa: BLE001 - InvalidDicomError, OSError, EOFError and more:
        # pydicom parses lazily, and a corrupt header can surface as almost any exception type
        # (struct.error, NotImplementedError for an unknown VR, ...): all are this file's fault.
        raise ValueError(f"not a readable DICOM file ({type(e).__name__}: {str(e)[:200]})") from None


FOR_PROCESSING_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image Storage - For Processing
    }
)


def for_processing(ds) -> bool:
    """Whether ``ds`` is an image FOR PROCESSING (its SOP class or Presentation Intent Type says so):
    the detector's raw values, which the modality processes before anyone reads them."""
    intent = str(getattr(ds, "PresentationIntentType", "") or "").strip().upper()
    return intent == "FOR PROCESSING" or str(getattr(ds, "SOPClassUID", "") or "") in FOR_PROCESSING_CLASSES


def stretch(ds, values: np.ndarray) -> tuple[float, float]:
    """The grey range an image without a display window is read through, from its pixel ``values``
    after the modality rescale: 8-bit display values as they are (as in a JPEG of the same image),
    otherwise the stored range, as a viewer's auto-window does."""
    rescaled = float(getattr(ds, "RescaleSlope", 1) or 1) != 1 or float(getattr(ds, "RescaleIntercept", 0) or 0) != 0
    if not rescaled and int(getattr(ds, "BitsStored", 16) or 16) <= 8 and values.min() >= 0:
        return 0.0, 255.0
    return float(values.min()), float(values.max())


def _pixels_to_gray(ds, max_pixels: int, min_side: int) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomRefused("no pixel data in this DICOM file")
    if for_processing(ds):
        raise DicomRefused(
            "an image FOR PROCESSING (raw detector data, before the modality's own processing); pneumolens reads "
            "images FOR PRESENTATION, the ones a radiologist reads"
        )
    if (why := outside_scope(ds)) is not None:
        raise OutOfScope(why)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise DicomRefused(f"multi-frame DICOM ({ds.NumberOfFrames} frames); a single radiograph is expected")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise DicomRefused("colour DICOM; a grayscale radiograph is expected")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols > max_pixels:
        limit = f"above the {max_pixels:,} limit; refused before decoding"
        raise DicomRefused(f"header claims {cols}x{rows} pixels, {limit}")
    if min(rows, cols) < min_side:
        raise DicomRefused(f"image is {cols}x{rows} pixels, smaller than {min_side} px a side")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken or truncated pixel data
        syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "unknown")
        why = str(e).splitlines()[0] if str(e) else ""
        raise DicomRefused(
            f"DICOM pixel data ({syntax} transfer syntax) cannot be decoded ({type(e).__name__}: {why})"
        ) from None
    if arr.ndim != 2 or min(arr.shape) < min_side:
        raise DicomRefused(f"DICOM pixel data is not one grayscale frame of at least {min_side} px (shape {arr.shape})")
    gray = displayed(ds, arr)
    if not np.isfinite(gray).all():
        raise DicomRefused("DICOM pixel data contains non-finite values")
    return gray


def displayed(ds, arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """A grayscale frame ``arr`` of ``ds`` as it is shown, (H, W) float32 in [0, 1] with white high:
    the modality rescale, then ``window`` (centre, width; linear) or the file's own display window,
    else the stretch a viewer's auto-window gives (``stretch``); MONOCHROME1 turned over."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds)
    windowed = window is not None or "WindowCenter" in ds or "VOILUTSequence" in ds
    if window is not None:
        centre, width = window
        arr = np.clip((np.asarray(arr, dtype=np.float64) - (centre - 0.5)) / max(width - 1, 1) + 0.5, 0, 1)
    elif windowed:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float64)
    if window is not None:
        lo, hi = 0.0, 1.0
    else:
        finite = arr[np.isfinite(arr)] if arr.size else arr
        if not finite.size:
            return np.full(arr.shape, np.nan, dtype=np.float32)
        lo, hi = (float(finite.min()), float(finite.max())) if windowed else stretch(ds, finite)
    gray = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        gray = 1.0 - gray  # MONOCHROME1: high values are dark
    return gray.astype(np.float32)


def uid_file_name(uid: object) -> str:
    """A SOP Instance UID as a file name: digits and dots only (a malformed UID from a sender must not
    name a path elsewhere), else a hash of it."""
    text = str(uid)
    if re.fullmatch(r"[0-9.]{1,64}", text) and not text.startswith("."):
        return text
    return "uid-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def header_dataset(data: bytes, keywords: list[str] | None = None):
    """The header of a DICOM file's bytes (a pydicom Dataset, no pixels; only ``keywords`` when
    given), or None for other files or a header that does not parse."""
    import pydicom

    if not is_dicom(data[:132]):
        return None
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=keywords)
    except Exception:  # noqa: BLE001 - a corrupt header raises almost any type; the image's own error is reported
        return None
