"""The pixels of the node's objects over WADO-RS (PS3.18 10.4 and 8.7): frames, the pixel data as
bulk data, and rendered images, which a zero-footprint viewer such as OHIF asks for.

Frames go as they are stored when the request allows it (``transfer-syntax=*``, or the stored
syntax by name), else uncompressed (explicit VR little endian, decoded by pydicom where the file is
compressed; grayscale only). Each part names its transfer syntax, as a viewer's decoder reads it.
Rendered images are JPEG (the default) or PNG: a grayscale frame through its modality rescale and
display window (or ``window=centre,width``) as ``pneumolens.data.dicom.displayed`` shows it, a
colour one as it is; ``viewport=width,height`` scales it to fit, ``quality`` sets JPEG's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

NATIVE = str(ExplicitVRLittleEndian)
OCTETS = "application/octet-stream"
# the media type each compressed syntax's frames go as (PS3.18 table 8.7.3-2)
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
RENDERED = {"image/jpeg": "JPEG", "image/png": "PNG"}


class NotAcceptable(ValueError):
    """No media type the request accepts can be given: HTTP 406."""


class BadRequest(ValueError):
    """A malformed frame list or rendering parameter: HTTP 400."""


class NoSuchFrame(LookupError):
    """A frame number past the object's frames, or an object without pixels: HTTP 404."""


@dataclass(frozen=True)
class Range:
    """One media range of an Accept header: ``multipart/related; type=T; transfer-syntax=S``, or a
    single-part type."""

    multipart: bool
    type: str
    syntax: str | None


def accepted(header: str) -> list[Range]:
    """The media ranges of an Accept header, in the order given (an empty header accepts anything)."""
    ranges = []
    for item in _split(header or "*/*"):
        name, *params = [p.strip() for p in item.split(";")]
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        name = name.lower()
        if name == "multipart/related":
            ranges.append(Range(True, values.get("type", "*/*").lower(), values.get("transfer-syntax")))
        else:
            ranges.append(Range(False, name, values.get("transfer-syntax")))
    return ranges


def _split(header: str) -> list[str]:
    """An Accept header's comma-separated ranges (commas inside quotes are not separators)."""
    items, current, quoted = [], "", False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in [*items, current] if item.strip()]


def _single(wanted: Range) -> bool:
    """Whether ``wanted`` asks for one bare part (``application/octet-stream`` itself); ``*/*``
    gets the multipart answer WADO-RS gives by default."""
    return not wanted.multipart and wanted.type == OCTETS


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1) if "PixelData" in ds else 0


def frame_numbers(text: str, count: int) -> list[int]:
    """A WADO-RS frame list (``1``, ``1,3``) as numbers; ``BadRequest`` if malformed, ``NoSuchFrame``
    past the ``count`` frames."""
    numbers = []
    for item in text.split(","):
        if not item.strip().isdigit() or int(item) < 1:
            raise BadRequest(f"frames {text}: expected frame numbers from 1, separated by commas")
        numbers.append(int(item))
    if count == 0:
        raise NoSuchFrame("the object has no pixel data (a report or presentation state)")
    if max(numbers) > count:
        raise NoSuchFrame(f"frame {max(numbers)} asked of an object of {count} frame(s)")
    return numbers


def _syntax(ds: Dataset) -> UID:
    return UID(str(ds.file_meta.get("TransferSyntaxUID", NATIVE)))


def frames(ds: Dataset, numbers: list[int], accept: str) -> tuple[list[tuple[bytes, str]], bool]:
    """The frames ``numbers`` (from 1) of ``ds`` (read with its pixels) as (bytes, part media type)
    pairs, and whether the request takes them as a single part (one frame, ``application/octet-stream``
    asked for without ``multipart``). ``NotAcceptable`` when no range of ``accept`` can be met."""
    stored = _syntax(ds)
    count = frame_count(ds)
    own_media = FRAME_MEDIA.get(str(stored)) if stored.is_compressed else None  # image/jls asked: the stored JPEG-LS
    for wanted in accepted(accept):
        if wanted.type not in ("*/*", "application/*", OCTETS) and wanted.type != own_media:
            continue
        single = _single(wanted)
        if not wanted.multipart and (wanted.type not in (OCTETS, "*/*") or (single and len(numbers) != 1)):
            continue
        as_stored = wanted.syntax in ("*", str(stored)) or (wanted.syntax is None and wanted.type == own_media)
        if stored.is_compressed and as_stored:
            media = f"{FRAME_MEDIA.get(str(stored), OCTETS)}; transfer-syntax={stored}"
            return [(_encapsulated_frame(ds, n, count), media) for n in numbers], single
        if wanted.syntax in (None, "*", NATIVE) and wanted.type in ("*/*", "application/*", OCTETS):
            media = f"{OCTETS}; transfer-syntax={NATIVE}"
            return [(_native_frame(ds, n, count), media) for n in numbers], single
    raise NotAcceptable(
        f"the frames are stored as {stored.name}; ask for multipart/related; type=application/octet-stream "
        f"(transfer-syntax={NATIVE}, or * for the stored syntax)"
    )


def _encapsulated_frame(ds: Dataset, number: int, count: int) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, number - 1, number_of_frames=count)


def _native_frame(ds: Dataset, number: int, count: int) -> bytes:
    """Frame ``number`` uncompressed, little endian, bits as allocated (1-bit frames packed each)."""
    from pydicom.pixels import pack_bits, pixel_array

    bits, samples = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1) or 1)
    if not _syntax(ds).is_compressed:
        if bits == 1:
            return pack_bits(pixel_array(ds, index=number - 1))
        size = int(ds.Rows) * int(ds.Columns) * samples * bits // 8
        data = ds.PixelData[(number - 1) * size : number * size]
        if len(data) != size:
            raise ValueError(f"frame {number} has {len(data)} of its {size} bytes")
        if _syntax(ds).is_little_endian or bits == 8:
            return bytes(data)
        return np.frombuffer(data, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
    if samples != 1:
        raise NotAcceptable("compressed colour frames go in their stored syntax only: ask for transfer-syntax=*")
    arr = pixel_array(ds, index=number - 1)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return arr.astype(f"<{'i' if signed else 'u'}{max(bits // 8, 1)}").tobytes()


def bulk_pixel_data(ds: Dataset, accept: str) -> tuple[list[tuple[bytes, str]], bool]:
    """The pixel data as bulk data: uncompressed, the value whole; compressed, its frames (as
    ``frames`` gives them)."""
    count = frame_count(ds)
    if count == 0:
        raise NoSuchFrame("the object has no pixel data")
    if _syntax(ds).is_compressed:
        return frames(ds, list(range(1, count + 1)), accept)
    for wanted in accepted(accept):
        if wanted.type in ("*/*", "application/*", OCTETS) and wanted.syntax in (None, "*", NATIVE):
            whole = ds.PixelData if _syntax(ds).is_little_endian or int(ds.BitsAllocated) <= 8 else None
            if whole is None:
                whole = b"".join(_native_frame(ds, n, count) for n in range(1, count + 1))
            return [(bytes(whole), f"{OCTETS}; transfer-syntax={NATIVE}")], _single(wanted)
    raise NotAcceptable("bulk data goes as application/octet-stream")


def render(ds: Dataset, number: int, accept: str, params: dict[str, str]) -> tuple[bytes, str]:
    """Frame ``number`` of ``ds`` as an image a browser shows, and its media type."""
    from PIL import Image

    from pneumolens.data.dicom import displayed

    media = next((r.type for r in accepted(accept) if not r.multipart and r.type in RENDERED), None)
    if media is None and any(r.type in ("*/*", "image/*") for r in accepted(accept)):
        media = "image/jpeg"
    if media is None:
        raise NotAcceptable("rendered images go as image/jpeg or image/png")
    if frame_count(ds) == 0:
        raise NoSuchFrame("the object has no pixel data to render (a report or presentation state)")
    quality = _numbers(params, "quality", 1, (90.0,))[0]
    window = _numbers(params, "window", 2, None)
    viewport = _numbers(params, "viewport", 2, None)
    if not 1 <= quality <= 100 or (window is not None and window[1] < 1):
        raise BadRequest("quality is 1 to 100 and a window's width at least 1")
    from pydicom.pixels import pixel_array

    arr = pixel_array(ds, index=number - 1)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        gray = displayed(ds, arr, (window[0], window[1]) if window else None)
        image = Image.fromarray(np.round(np.nan_to_num(gray) * 255).astype(np.uint8))
    else:  # pydicom gives colour as RGB
        image = Image.fromarray(np.asarray(arr, dtype=np.uint8), "RGB")
    if viewport is not None:
        if min(viewport) < 1:
            raise BadRequest("viewport=width,height: each at least 1")
        image.thumbnail((int(viewport[0]), int(viewport[1])))
    out = io.BytesIO()
    image.save(out, RENDERED[media], **({"quality": int(quality)} if media == "image/jpeg" else {}))
    return out.getvalue(), media


def _numbers(params: dict[str, str], name: str, count: int, default: tuple[float, ...] | None):
    if name not in params:
        return default
    parts = params[name].split(",")
    if name == "window" and len(parts) == 3 and parts[2].strip().lower() in ("", "linear"):
        parts = parts[:2]  # the third value names the function: linear only
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise BadRequest(f"{name}={params[name]}: expected {count} number(s) separated by commas")
    return values
