from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FULLRES, real_images
from pneumolens.config import PreprocessConfig
from pneumolens.data.images import ImageReadError, load_input, preprocess, read_image


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data (decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_real_jpeg_is_gray_unit_range():
    x = read_image(real_images("train", "NORMAL", 1)[0])
    assert x.dtype == np.float32 and x.ndim == 2
    assert 0.0 <= x.min() < 0.2 and 0.8 < x.max() <= 1.0  # a real radiograph spans the range


def test_fullres_jpeg_resizes_to_model_input():
    path = sorted((FULLRES / "NORMAL").iterdir())[0]
    with Image.open(path) as img:
        assert min(img.size) > 500  # really a full-resolution original
    x = load_input(path, PreprocessConfig(image_size=64, channels=3))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert np.array_equal(x[0], x[2])  # grayscale replicated
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("interp", ["nearest", "bilinear", "bicubic"])
def test_preprocess_keeps_contract(interp):
    gray = np.random.default_rng(0).random((300, 200), dtype=np.float32)
    x = preprocess(gray, PreprocessConfig(image_size=48, channels=1, interpolation=interp))
    assert x.shape == (1, 48, 48) and x.min() >= 0.0 and x.max() <= 1.0


def test_clahe_clip_limit_sets_the_local_contrast():
    gray = read_image(real_images("train", "NORMAL", 1)[0])
    local = []
    for clip in (0.01, 0.02, 0.04):  # at 128 px: at most 2, 5, 10 of a tile's 256 pixels per grey level
        x = preprocess(gray, PreprocessConfig(image_size=128, equalize="clahe", clahe_clip=clip))[0]
        local.append(np.abs(np.diff(x, axis=1)).mean())  # mean neighbour difference: local contrast
    assert local[0] < local[1] < local[2]
    plain = preprocess(gray, PreprocessConfig(image_size=128))[0]
    assert np.abs(np.diff(plain, axis=1)).mean() < local[0]
    assert PreprocessConfig(**{"image_size": 64, "equalize": "clahe"}).clahe_clip == 0.01  # older model files


def _save(tmp: Path, name: str, img: Image.Image, **kw) -> Path:
    p = tmp / name
    img.save(p, **kw)
    return p


def test_valid_modes_all_decode(tmp_path):
    base = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    cases = {
        "g16.png": Image.fromarray((base * 65535).astype(np.uint16)),
        "rgba.png": Image.fromarray((np.dstack([base] * 3 + [np.ones_like(base)]) * 255).astype(np.uint8), "RGBA"),
        "palette.png": Image.fromarray((base * 255).astype(np.uint8)).convert("P"),
        "rgb.jpg": Image.fromarray((np.dstack([base] * 3) * 255).astype(np.uint8)),
        "cmyk.jpg": Image.fromarray((np.dstack([base] * 3) * 255).astype(np.uint8)).convert("CMYK"),
    }
    for name, img in cases.items():
        x = read_image(_save(tmp_path, name, img))
        assert x.shape == (64, 64), name
        # a left-to-right ramp survives every mode: dark top-left, bright bottom-right
        assert x[0, 0] < 0.1 and x[-1, -1] > 0.85, name


def test_a_16_bit_png_reads_at_the_bit_depth_its_pixels_use(tmp_path):
    """A real film saved as a 16-bit PNG of 10, 12 or 16 bits, or a compressed 16-bit TIFF of 12 (white
    at 2**bits - 1, as detector exports are), reads as its 8-bit file does, and the shipped model gives
    its call; read as 16 bits, a 12-bit normal film came out almost black and was called pneumonia."""
    import pneumolens
    from pneumolens.data.images import white_of

    film = sorted(real_images("test", "NORMAL", 3))[1]
    gray = read_image(film)
    model = pneumolens.load()
    plain = model.predict(gray).probability
    for bits, suffix, options in (
        (10, "png", {}),
        (12, "png", {}),
        (16, "png", {}),
        (12, "tif", {"compression": "tiff_lzw"}),
    ):
        pixels = Image.fromarray(np.round(gray * (2**bits - 1)).astype(np.uint16))
        path = _save(tmp_path, f"b{bits}.{suffix}", pixels, **options)
        x = read_image(path)
        np.testing.assert_allclose(x, gray, atol=0.5 / (2**bits - 1))
        assert model.predict(str(path)).probability == pytest.approx(plain, abs=0.01)
    assert plain < model.loaded.threshold  # a normal film called normal, at every depth
    assert [white_of(np.array([v])) for v in (0, 255, 256, 4095, 4096, 65535)] == [255, 255, 511, 4095, 8191, 65535]


@pytest.mark.parametrize(
    "orientation, stored",
    [
        (6, Image.Transpose.ROTATE_90),
        (3, Image.Transpose.ROTATE_180),
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_an_exif_orientation_is_applied_as_viewers_do(tmp_path, orientation, stored):
    """A file whose pixels are stored turned, with the EXIF tag saying how to show them (a phone's or
    camera's export), reads upright, as every viewer and browser shows it: not sideways."""
    film = sorted((FULLRES / "NORMAL").iterdir())[1]  # not square: a turn shows in the shape
    upright = Image.open(film).convert("L")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, "turned.png", upright.transpose(stored), exif=exif)
    assert Image.open(path).size != upright.size or orientation in (2, 3)
    np.testing.assert_array_equal(read_image(path), np.asarray(upright, dtype=np.float32) / 255)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpeg", b"", "empty file (0 bytes)"),
        ("notes.jpeg", b"this is a text file, not an X-ray\n", "not a JPEG, PNG, TIFF or DICOM"),
        ("bomb.png", png_claiming(50_000, 50_000), "refused before decoding"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert name in str(e.value) and reason in str(e.value)


def test_truncated_jpeg_is_refused(tmp_path):
    data = real_images("train", "PNEUMONIA", 1)[0].read_bytes()
    p = tmp_path / "cut.jpeg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpeg: corrupt or truncated"):
        read_image(p)


def test_missing_and_tiny(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    (tmp_path / "dot.png").write_bytes(buf.getvalue())
    with pytest.raises(ImageReadError, match="dot.png: image is 1x1"):
        read_image(tmp_path / "dot.png")
