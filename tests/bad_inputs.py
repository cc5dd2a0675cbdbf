"""A corpus of bad and awkward inputs, generated (never copied from the dataset) for the tests.

Each entry: file name -> ``None`` for a valid image that must give a prediction, or a fragment of
the reason it must be refused with.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from conftest import make_dicom, real_images

NON_UTF8_NAME = b"r\xf6ntgen-\xff.jpeg"  # Latin-1 bytes: not valid UTF-8

EXPECTED: dict[str, str | None] = {
    "zero-bytes.jpeg": "empty",
    "truncated.jpeg": "corrupt or truncated",
    "bad-crc.png": "corrupt or truncated",
    "text.jpeg": "not a JPEG, PNG, TIFF or DICOM image",
    "gray16.png": None,
    "gray12-in-16.tif": None,
    "truncated.tif": "corrupt or truncated",
    "rgba.png": None,
    "palette.png": None,
    "cmyk.jpeg": None,
    "one-pixel.png": "smaller than",
    "huge-header.png": "refused before decoding",
    "no-pixels.dcm": "no pixel data",
    "monochrome1.dcm": None,
    "lateral.dcm": "not a frontal view (View Position LL)",
    "loop-a.jpeg": "symbolic link loop",
    os.fsdecode(NON_UTF8_NAME): None,
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_corpus(folder: Path) -> dict[str, Path]:
    """Write every corpus file into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    src = real_images("test", "NORMAL", 1)[0]
    gray = np.asarray(Image.open(src).convert("L"))
    jpeg = src.read_bytes()
    files: dict[str, bytes] = {}

    files["zero-bytes.jpeg"] = b""
    files["truncated.jpeg"] = jpeg[: len(jpeg) // 3]
    good_png = io.BytesIO()
    Image.fromarray(gray).save(good_png, "PNG")
    png = bytearray(good_png.getvalue())
    idat = png.index(b"IDAT")
    png[idat + 8] ^= 0xFF  # one byte of the image data flipped: its CRC no longer matches
    files["bad-crc.png"] = bytes(png)
    files["text.jpeg"] = b"this is a radiology report, not an image\n" * 20

    def encoded(img: Image.Image, fmt: str) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()

    files["gray16.png"] = encoded(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")
    tiff = encoded(Image.fromarray(gray.astype(np.uint16) * 16), "TIFF")  # 12 bits in a 16-bit TIFF
    files["gray12-in-16.tif"], files["truncated.tif"] = tiff, tiff[: len(tiff) // 2]
    rgba = Image.fromarray(gray).convert("RGBA")
    files["rgba.png"] = encoded(rgba, "PNG")
    files["palette.png"] = encoded(Image.fromarray(gray).convert("P"), "PNG")
    files["cmyk.jpeg"] = encoded(Image.fromarray(gray).convert("CMYK"), "JPEG")
    files["one-pixel.png"] = encoded(Image.new("L", (1, 1), 128), "PNG")
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)  # claims 50,000 x 50,000 8-bit gray
    files["huge-header.png"] = (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    for name, data in files.items():
        (folder / name).write_bytes(data)
    make_dicom(folder / "no-pixels.dcm", gray, with_pixels=False)
    make_dicom(folder / "monochrome1.dcm", 255 - gray, photometric="MONOCHROME1")
    lateral = pydicom.dcmread(make_dicom(folder / "lateral.dcm", gray))  # readable, and not what the model is for
    lateral.ViewPosition = "LL"
    lateral.save_as(folder / "lateral.dcm")
    os.symlink("loop-b.jpeg", folder / "loop-a.jpeg")  # a.jpeg -> b.jpeg -> a.jpeg
    os.symlink("loop-a.jpeg", folder / "loop-b.jpeg")
    with open(os.path.join(os.fsencode(folder), NON_UTF8_NAME), "wb") as f:
        f.write(jpeg)
    return {name: folder / name for name in EXPECTED} | {"loop-b.jpeg": folder / "loop-b.jpeg"}
