"""Property tests (hypothesis) on decoding and preprocessing: whatever comes in, what comes out is
finite, in [0, 1] and at the model's input shape; and bytes are either an image or a clear refusal."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from conftest import make_dicom, real_images
from pneumolens.config import PreprocessConfig
from pneumolens.data.images import ImageReadError, preprocess, read_image

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sides = st.integers(min_value=8, max_value=160)
configs = st.builds(
    PreprocessConfig,
    image_size=st.integers(min_value=16, max_value=96),
    channels=st.sampled_from([1, 3]),
    interpolation=st.sampled_from(["nearest", "bilinear", "bicubic"]),
    equalize=st.sampled_from(["none", "clahe"]),
)


def unit_arrays():
    """2-D float32 arrays in [0, 1]: noise, constants and extremes alike."""
    shape = st.tuples(sides, sides)
    values = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32)
    return arrays(np.float32, shape, elements=values)


def check(x: np.ndarray, cfg: PreprocessConfig) -> None:
    assert x.dtype == np.float32 and x.shape == (cfg.channels, cfg.image_size, cfg.image_size)
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


@FAST
@given(gray=unit_arrays(), cfg=configs)
def test_preprocess_any_gray_array(gray, cfg):
    check(preprocess(gray, cfg), cfg)


@settings(max_examples=15, deadline=None)
@given(gray=unit_arrays(), lungs=st.sampled_from(["crop", "mask", "soft"]))
def test_preprocess_lung_modes_any_array(gray, lungs):
    cfg = PreprocessConfig(image_size=48, lungs=lungs)
    check(preprocess(gray, cfg), cfg)


image_modes = st.sampled_from(["L", "I;16", "RGB", "RGBA", "P", "LA", "CMYK", "1"])


@FAST
@given(
    pixels=arrays(np.uint16, st.tuples(sides, sides)),
    mode=image_modes,
    fmt=st.sampled_from(["PNG", "JPEG"]),
    cfg=configs,
)
def test_decode_any_encoded_image(pixels, mode, fmt, cfg):
    if fmt == "JPEG" and mode in ("I;16", "RGBA", "P", "LA"):
        fmt = "PNG"  # JPEG cannot hold these modes
    if mode == "CMYK":
        fmt = "JPEG"  # nor PNG this one
    if mode == "I;16":
        img = Image.fromarray(pixels.astype("<u2"))  # 16-bit grayscale
        assert img.mode.startswith("I;16")
    else:
        img = Image.fromarray((pixels >> 8).astype(np.uint8), mode="L").convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    gray = read_image("generated." + fmt.lower(), data=buf.getvalue())
    assert gray.shape == pixels.shape and gray.dtype == np.float32
    assert np.isfinite(gray).all() and 0.0 <= gray.min() <= gray.max() <= 1.0
    check(preprocess(gray, cfg), cfg)


@settings(max_examples=30, deadline=None)
@given(
    pixels=st.one_of(arrays(np.uint8, st.tuples(sides, sides)), arrays(np.uint16, st.tuples(sides, sides))),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]),
    slope=st.sampled_from([1.0, 0.5, 2.0]),
    intercept=st.sampled_from([0.0, -1024.0, 100.0]),
    window=st.one_of(st.none(), st.tuples(st.floats(0, 4000), st.floats(1, 4000))),
)
def test_decode_any_dicom(tmp_path_factory, pixels, photometric, slope, intercept, window):
    path = tmp_path_factory.mktemp("dcm") / "x.dcm"
    make_dicom(path, pixels, photometric, slope=slope, intercept=intercept, window=window)
    gray = read_image(path)
    assert gray.shape == pixels.shape and np.isfinite(gray).all() and 0.0 <= gray.min() <= gray.max() <= 1.0


SEED_BYTES = real_images("test", "NORMAL", 1)[0].read_bytes()


@settings(max_examples=150, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(SEED_BYTES)),
    flips=st.lists(st.tuples(st.integers(0, len(SEED_BYTES) - 1), st.integers(1, 255)), max_size=8),
)
def test_mutated_jpeg_is_an_image_or_a_clear_refusal(cut, flips):
    data = bytearray(SEED_BYTES[:cut] if cut > 0 else SEED_BYTES)
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    try:
        gray = read_image("mutated.jpeg", data=bytes(data))
    except ImageReadError as e:
        assert "mutated.jpeg" in str(e) and e.reason
    else:
        assert gray.ndim == 2 and np.isfinite(gray).all() and 0.0 <= gray.min() <= gray.max() <= 1.0


CS_OR_JUNK = st.one_of(st.text(max_size=20), st.sampled_from(["CHEST", "KNEE", "LL", "PA", "CT", "045Y", "20200101"]))


@settings(max_examples=60, deadline=None)
@given(
    body_part=CS_OR_JUNK,
    view=CS_OR_JUNK,
    modality=CS_OR_JUNK,
    age=CS_OR_JUNK,
    born=CS_OR_JUNK,
    flips=st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 255)), max_size=6),
)
def test_header_checks_never_raise_whatever_the_header_says(
    tmp_path_factory, body_part, view, modality, age, born, flips
):
    """Any text in the fields the scope and age checks read, and flipped header bytes: a film read or
    refused by name (out of scope or not), and header flags that are a list, never an exception."""
    import pydicom

    from pneumolens.data.scope import OLDER_THAN_TRAINING, header_flags

    path = make_dicom(tmp_path_factory.mktemp("hdr") / "h.dcm", np.full((32, 32), 100, np.uint8))
    ds = pydicom.dcmread(path)
    ds.BodyPartExamined, ds.ViewPosition, ds.Modality, ds.PatientAge, ds.PatientBirthDate = (
        body_part, view, modality, age, born,
    )  # fmt: skip
    ds.StudyDate = "20261207"
    try:
        ds.save_as(path)
    except Exception:  # noqa: BLE001 - pydicom may refuse to write a value at all: nothing to read then
        return
    data = bytearray(path.read_bytes())
    for at, xor in flips:
        data[at % len(data)] ^= xor
    assert set(header_flags(bytes(data))) <= {OLDER_THAN_TRAINING}
    try:
        gray = read_image("h.dcm", data=bytes(data))
    except ImageReadError as e:
        assert "h.dcm" in str(e) and e.reason
        assert not e.out_of_scope or e.reason.startswith(("not a radiograph", "not a chest film", "not a frontal view"))
    else:  # a flip may change the header's size fields: any grayscale film in [0, 1]
        assert gray.ndim == 2 and np.isfinite(gray).all() and 0.0 <= gray.min() <= gray.max() <= 1.0
