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


def test_a_list_is_read_in_batches_as_each_film_alone(monkeypatch):
    """The shipped model on real films, a mirrored one, an inverted one, a blank and noise: batches of two
    (every forward pass split across films) give each film the probability, flags and measures it
    gets alone, so no film's mask or orientation is handed to its neighbour."""
    import pneumolens.api
    import pneumolens.lungs.orientation
    import pneumolens.lungs.segment

    films = [read_image(p) for p in real_images("test", "NORMAL", 3) + real_images("test", "PNEUMONIA", 3)]
    films += [films[0][:, ::-1].copy(), 1 - films[1], np.full((224, 224), 0.5, np.float32)]
    films.append(np.random.default_rng(0).random((224, 224), dtype=np.float32))
    shipped = pneumolens.load()
    alone = [shipped.predict(f) for f in films]
    for module in (pneumolens.api, pneumolens.lungs.orientation, pneumolens.lungs.segment):
        monkeypatch.setattr(module, "BATCH", 2)
    events = []  # films are read a batch at a time, each batch segmented before the next is read
    monkeypatch.setattr(pneumolens.api, "to_gray", lambda x: events.append("read") or x)
    masks_of = shipped.segmenter.masks_of
    monkeypatch.setattr(shipped.segmenter, "masks_of", lambda g, **k: events.append(len(g)) or masks_of(g, **k))
    together = shipped.predict(films)
    assert events == ["read", "read", 2] * 5
    assert [r.flags for r in together] == [r.flags for r in alone]
    assert [r.probability for r in together] == pytest.approx([r.probability for r in alone], abs=1e-5)
    for a, b in zip(together, alone, strict=True):
        assert a.measures == pytest.approx(b.measures, abs=1e-6)
    assert "mirrored" in alone[6].flags and "inverted" in alone[7].flags  # the checks did fire
    assert alone[8].flags == ["no_lungs_found"] and "noisy" in alone[9].flags
    assert len({r.probability for r in alone[:6]}) == 6  # six films, six different calls


def test_a_folder_is_read_in_batches_as_each_film_alone(tmp_path):
    """``predict``'s folder path segments and checks each batch of films at once in its loader: with
    batches of three, a broken file among them, each film gets what the API gives it alone."""
    from pneumolens.inference import Predictor

    films = [read_image(p) for p in real_images("test", "NORMAL", 2) + real_images("test", "PNEUMONIA", 2)]
    films += [films[0][:, ::-1], 1 - films[1], np.full((224, 224), 0.5)]
    paths = []
    for i, film in enumerate(films):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.round(film * 255).astype(np.uint8)).save(paths[-1])
    paths.insert(2, tmp_path / "broken.png")
    paths[2].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    shipped = pneumolens.load()
    got = Predictor(shipped.loaded).predict_paths(paths, batch_size=3)
    assert [g.path for g in got] == [str(p) for p in paths]
    assert got[2].probability is None and got[2].error  # said, and the files after it still read
    for g, path in zip(got[:2] + got[3:], paths[:2] + paths[3:], strict=True):
        alone = shipped.predict(str(path))
        assert g.flags == alone.flags and g.probability == pytest.approx(alone.probability, abs=1e-5), path
        assert g.measures == pytest.approx(alone.measures, abs=1e-6)
    assert "mirrored" in got[5].flags and "inverted" in got[6].flags and got[7].flags == ["no_lungs_found"]


def test_api_refusals(model, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_text("no")
    with pytest.raises(ImageReadError, match="bad.jpeg"):
        model.predict(str(bad))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.predict(np.full((64, 64), 7.0))
    with pytest.raises(TypeError, match="unsupported image type"):
        model.predict(3.14)


def test_errors_return_keeps_a_list_going_past_what_cannot_be_read(model, tmp_path):
    """``errors="return"``: each image that cannot be used gets a Result saying why, in its place, and
    every other image the Result it gets alone; the default still stops at the first."""
    good = [str(p) for p in real_images("test", "NORMAL", 1) + real_images("test", "PNEUMONIA", 1)]
    bad = tmp_path / "bad.jpeg"
    bad.write_text("no")
    items = [str(bad), good[0], np.full((64, 64), 7.0), good[1], 3.14]
    with pytest.raises(ImageReadError, match="bad.jpeg"):
        model.predict(items)
    got = model.predict(items, errors="return")
    assert [r.error is None for r in got] == [False, True, False, True, False]
    assert "bad.jpeg: not a JPEG, PNG, TIFF or DICOM" in got[0].error and "[0, 1]" in got[2].error
    assert "unsupported image type float" in got[4].error
    assert all(r.probability is None and r.label is None for r in (got[0], got[2], got[4]))
    for r, path in zip((got[1], got[3]), good, strict=True):
        assert r.probability == pytest.approx(model.predict(path).probability, abs=1e-6) and r.label
    assert model.predict(str(bad), errors="return").error == got[0].error  # one image: one Result
    with pytest.raises(ValueError, match="errors must be 'raise' or 'return', not 'skip'"):
        model.predict(good, errors="skip")


def test_a_model_says_what_it_is():
    shipped = pneumolens.load()
    assert repr(shipped) == (
        f"Model(name='pneumolens-default-soup3', sha256={shipped.loaded.sha256[:16]!r}, threshold=0.384, "
        "input=128px, lungs='crop')"
    )
