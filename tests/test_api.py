"""The Python API: paths, arrays, PIL images and pydicom datasets, one at a time or batched."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

import pneumolens
from conftest import make_dicom, real_images
from pneumolens.data.images import ImageReadError, read_image


@pytest.fixture(scope="module")
def model(trained_run):
    return pneumolens.load(trained_run)


def test_three_lines_to_an_explained_prediction(model):
    path = real_images("test", "PNEUMONIA", 1)[0]
    result = model.predict(str(path), explain="gradcam")
    assert 0 <= result.probability <= 1 and result.label in ("NORMAL", "PNEUMONIA")
    assert result.heatmap.shape == (224, 224) and result.flags == [] and result.warning is None
    assert 1 <= len(result.regions) <= 3 and all(r["points"][0] == r["points"][-1] for r in result.regions)


def test_every_input_kind_gives_the_same_probability(model, tmp_path):
    path = real_images("test", "NORMAL", 1)[0]
    gray = read_image(path)
    u8 = np.round(gray * 255).astype(np.uint8)
    ds = pydicom.dcmread(make_dicom(tmp_path / "x.dcm", u8))
    results = model.predict([str(path), gray, u8, Image.open(path), ds])  # one batch
    probs = [r.probability for r in results]
    assert len(results) == 5 and all(r.heatmap is None and r.regions == [] for r in results)
    assert np.allclose(probs, probs[0], atol=1e-3), probs


def test_api_refusals(model, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_text("no")
    with pytest.raises(ImageReadError, match="bad.jpeg"):
        model.predict(str(bad))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.predict(np.full((64, 64), 7.0))
    with pytest.raises(TypeError, match="unsupported image type"):
        model.predict(3.14)
