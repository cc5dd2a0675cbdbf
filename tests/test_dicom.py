"""DICOM input: display transforms, refusals, and no patient identifiers in the output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import PATIENT_ID, PATIENT_NAME, make_dicom, real_images
from pneumolens.cli import main
from pneumolens.data.images import ImageReadError, read_image


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    return read_image(real_images("test", "PNEUMONIA", 1)[0])  # (224, 224) in [0, 1]


def test_monochrome2_8bit_matches_the_jpeg(tmp_path, xray):
    p = make_dicom(tmp_path / "a.dcm", np.round(xray * 255).astype(np.uint8))
    g = read_image(p)
    assert g.shape == xray.shape
    assert np.abs(g - xray).max() <= 0.5 / 255 + 1e-6  # 8-bit display values, as the JPEG has them


def test_monochrome1_16bit_is_inverted(tmp_path, xray):
    stored = np.round((1 - xray) * 4095).astype(np.uint16)  # MONOCHROME1: bright = low values
    g1 = read_image(make_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1"))
    g2 = read_image(make_dicom(tmp_path / "m2.dcm", np.round(xray * 4095).astype(np.uint16)))
    assert np.abs(g1 - g2).max() < 1e-3  # air dark in both


def test_rescale_and_window_are_applied(tmp_path, xray):
    stored = np.round(xray * 1000).astype(np.uint16)
    plain = read_image(make_dicom(tmp_path / "p.dcm", stored, slope=2.0, intercept=-1000.0))
    assert np.corrcoef(plain.ravel(), xray.ravel())[0, 1] > 0.999  # a linear LUT keeps the picture
    # a narrow window around the middle of the (rescaled) range saturates both ends
    narrow = read_image(make_dicom(tmp_path / "w.dcm", stored, slope=2.0, intercept=-1000.0, window=(0.0, 400.0)))
    assert (narrow == 0).mean() > (plain == 0).mean() + 0.05 and (narrow == 1).mean() > 0.05


@pytest.mark.parametrize(
    "kwargs, reason",
    [({"with_pixels": False}, "no pixel data"), ({"frames": 2}, "multi-frame DICOM")],
)
def test_refused_dicoms_name_the_file(tmp_path, kwargs, reason):
    pixels = np.zeros((2, 64, 64) if kwargs.get("frames") else (64, 64), np.uint8)
    p = make_dicom(tmp_path / "bad.dcm", pixels, **kwargs)
    with pytest.raises(ImageReadError, match=f"bad.dcm: {reason}"):
        read_image(p)


def test_images_for_processing_are_refused_by_name(tmp_path, xray):
    """Raw detector data (the DX For Processing class, or an image whose Presentation Intent Type says
    FOR PROCESSING) is refused with the reason; the same pixels FOR PRESENTATION are read."""
    pixels = np.round(xray * 4095).astype(np.uint16)
    assert read_image(make_dicom(tmp_path / "shown.dcm", pixels)).shape == pixels.shape
    for name, change in (
        ("class.dcm", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}),
        ("intent.dcm", {"PresentationIntentType": "FOR PROCESSING"}),
    ):
        path = make_dicom(tmp_path / name, pixels)
        ds = pydicom.dcmread(path)
        for keyword, value in change.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(path)
        with pytest.raises(ImageReadError, match=f"{name}: an image FOR PROCESSING"):
            read_image(path)


def _with(path: Path, **header) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in header.items():
        if keyword == "ViewMeaning":
            code = pydicom.Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10236", "SRT", value
            ds.ViewCodeSequence = [code]
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "header, reason",
    [
        ({"BodyPartExamined": "KNEE"}, "not a chest film (Body Part Examined KNEE)"),
        ({"BodyPartExamined": "HAND"}, "not a chest film (Body Part Examined HAND)"),
        ({"ViewPosition": "LL"}, "not a frontal view (View Position LL)"),
        ({"ViewPosition": "RLD"}, "not a frontal view (View Position RLD)"),
        ({"ViewMeaning": "left lateral"}, "not a frontal view (View Code Sequence says lateral)"),
        ({"Modality": "CT"}, "not a radiograph (Modality CT)"),
        ({"BodyPartExamined": "CHEST", "ViewPosition": "LL"}, "not a frontal view (View Position LL)"),
    ],
)
def test_films_the_model_is_not_for_are_refused_by_their_header(tmp_path, xray, header, reason):
    """A lateral view, another body part or another modality is refused with the field and its value,
    before any pixel is decoded; the refusal says it is out of scope (a node acknowledges such films)."""
    path = _with(make_dicom(tmp_path / "other.dcm", np.round(xray * 255).astype(np.uint8)), **header)
    with pytest.raises(ImageReadError, match=f"other.dcm: {re.escape(reason)}") as refused:
        read_image(path)
    assert refused.value.out_of_scope
    with pytest.raises(ImageReadError) as broken:  # an unreadable film is not out of scope
        read_image(make_dicom(tmp_path / "broken.dcm", np.zeros((64, 64), np.uint8), with_pixels=False))
    assert not broken.value.out_of_scope


@pytest.mark.parametrize(
    "header",
    [
        {},  # nothing said: the lung checks decide
        {"BodyPartExamined": "CHEST", "ViewPosition": "PA"},
        {"BodyPartExamined": "CHESTABDOMEN", "ViewPosition": "AP"},  # a neonate's film
        {"BodyPartExamined": "PORT CHEST"},
        {"BodyPartExamined": "THORAX", "Modality": "CR"},
        {"BodyPartExamined": "Thorax p.a.", "Modality": "OT"},  # a scanned film's secondary capture
        {"ViewMeaning": "postero-anterior"},
    ],
)
def test_frontal_chest_films_are_read_whatever_their_header_says(tmp_path, xray, header):
    path = _with(make_dicom(tmp_path / "chest.dcm", np.round(xray * 255).astype(np.uint8)), **header)
    assert np.abs(read_image(path) - xray).max() <= 0.5 / 255 + 1e-6


def test_a_site_widens_what_is_read_by_the_environment(tmp_path, xray, monkeypatch):
    """PNEUMOLENS_BODY_PARTS and PNEUMOLENS_VIEWS replace the accepted terms; * accepts any value."""
    pixels = np.round(xray * 255).astype(np.uint8)
    torace = _with(make_dicom(tmp_path / "it.dcm", pixels), BodyPartExamined="TORACE")
    lateral = _with(make_dicom(tmp_path / "ll.dcm", pixels), ViewPosition="LL")
    meaning = _with(make_dicom(tmp_path / "lat.dcm", pixels), ViewMeaning="right lateral")
    for path in (torace, lateral, meaning):
        with pytest.raises(ImageReadError):
            read_image(path)
    monkeypatch.setenv("PNEUMOLENS_BODY_PARTS", "chest, torace")
    monkeypatch.setenv("PNEUMOLENS_VIEWS", "PA,AP,LL")
    assert read_image(torace).shape == read_image(lateral).shape == xray.shape
    with pytest.raises(ImageReadError, match="View Code Sequence says lateral"):  # only * opens the coded view
        read_image(meaning)
    monkeypatch.setenv("PNEUMOLENS_VIEWS", "*")
    assert read_image(meaning).shape == xray.shape
    monkeypatch.setenv("PNEUMOLENS_BODY_PARTS", "*")
    assert read_image(_with(make_dicom(tmp_path / "k.dcm", pixels), BodyPartExamined="KNEE")).shape == xray.shape


def test_truncated_dicom(tmp_path, xray):
    p = make_dicom(tmp_path / "t.dcm", np.round(xray * 255).astype(np.uint8))
    p.write_bytes(p.read_bytes()[:-20000])
    with pytest.raises(ImageReadError, match="t.dcm"):
        read_image(p)


def test_predict_a_dicom_without_leaking_identifiers(trained_run, tmp_path, xray, capsys, caplog):
    p = make_dicom(tmp_path / "study.dcm", np.round(xray * 65535).astype(np.uint16), "MONOCHROME2")
    assert main(["predict", str(p), "--model", str(trained_run), "--json"]) == 0
    out = capsys.readouterr()
    d = json.loads(out.out)
    assert 0 <= d["probability"] <= 1
    everything = out.out + out.err + caplog.text
    assert PATIENT_NAME not in everything and PATIENT_ID not in everything


@pytest.mark.parametrize("syntax", ["deflated", "rle", "jpeg-lossless", "jpeg-ls", "jpeg2000", "big-endian"])
@pytest.mark.parametrize("bits", [8, 16])
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(tmp_path, xray, syntax, bits):
    stored = np.round(xray * 255).astype(np.uint8) if bits == 8 else np.round(xray * 4095).astype(np.uint16)
    plain = read_image(make_dicom(tmp_path / "plain.dcm", stored))
    packed = make_dicom(tmp_path / f"{syntax}.dcm", stored, syntax=syntax)
    assert packed.stat().st_size < (tmp_path / "plain.dcm").stat().st_size or syntax in ("rle", "big-endian")
    if syntax == "big-endian":
        assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    assert np.array_equal(read_image(packed), plain)  # lossless: the very same image


def test_undecodable_compressed_pixels_name_the_file_and_syntax(tmp_path, xray):
    import pydicom
    from pydicom.encaps import encapsulate

    p = make_dicom(tmp_path / "garbled.dcm", np.round(xray * 255).astype(np.uint8), syntax="jpeg-lossless")
    ds = pydicom.dcmread(p)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(range(256)) * 4])  # a lossless JPEG header, then noise
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"garbled.dcm: DICOM pixel data \(JPEG Lossless.*\) cannot be decoded"):
        read_image(p)


def test_dicom_films_are_grouped_by_patient_id_without_keeping_it(trained_run, tmp_path, caplog):
    """One patient's films share a key (split and bootstrap draw them together); the key is a
    number in listing order, never the ID; films without an ID, PNGs and broken headers stay alone."""
    import logging

    from PIL import Image

    from pneumolens.data.sources import find_split
    from pneumolens.data.split import patient_split

    ids = {
        "NORMAL": ["MRN-0001", "MRN-0001", "MRN-0002", "", "MRN-0004"],
        "PNEUMONIA": ["MRN-0003", "MRN-0003", "MRN-0001", "MRN-0005", "MRN-0006"],
    }
    for label, pids in ids.items():
        folder = tmp_path / "site" / label
        folder.mkdir(parents=True)
        for i, (pid, src) in enumerate(zip(pids, real_images("test", label, len(pids)), strict=True)):
            make_dicom(folder / f"{label[0]}{i}.dcm", np.asarray(Image.open(src).convert("L")), patient_id=pid)
    Image.open(real_images("test", "NORMAL", 6)[5]).save(tmp_path / "site" / "NORMAL" / "z.png")
    (tmp_path / "site" / "NORMAL" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    with caplog.at_level(logging.INFO, logger="pneumolens"):
        samples = find_split(tmp_path / "site", "test")
    key = {p.name: s.patient for s in samples for p in [Path(s.path)]}
    assert key["N0.dcm"] == key["N1.dcm"] == key["P2.dcm"] == "dicom-patient-1"  # MRN-0001, normal and pneumonia
    assert key["P0.dcm"] == key["P1.dcm"] != key["N2.dcm"]
    assert len({key[f"N{i}.dcm"] for i in (0, 2, 4)} | {key[f"P{i}.dcm"] for i in (0, 3, 4)}) == 6
    assert (key["N3.dcm"], key["z.png"], key["broken.dcm"]) == ("file:N3", "file:z", "file:broken")  # no ID
    assert [s.patient for s in find_split(tmp_path / "site", "test")] == [s.patient for s in samples]  # repeatable
    assert "MRN" not in repr(samples) + caplog.text and "grouped 9 DICOM film(s) into 6 patient(s)" in caplog.text
    for seed in range(5):  # a patient's films never straddle the split
        split = patient_split(samples, 0.34, seed)
        assert not {s.patient for s in split.train} & {s.patient for s in split.val}
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(tmp_path / "site"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_patients"] == 6 + 3 - 1  # six IDs, three files alone, the broken one left out
    assert "MRN" not in out.read_text()


@pytest.mark.parametrize(
    "header, years",
    [
        ({"PatientAge": "045Y"}, 45.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "052W"}, 52 * 7 / 365.25),
        ({"PatientAge": "003D"}, 3 / 365.25),
        ({"PatientBirthDate": "20200301", "StudyDate": "20260301"}, 2191 / 365.25),
        ({"PatientBirthDate": "20200301", "AcquisitionDate": "20210301"}, 365 / 365.25),  # no study date: the next
        ({"PatientAge": "45 years"}, None),  # malformed: not guessed
        ({"PatientBirthDate": "20200231", "StudyDate": "20260301"}, None),  # not a day
        ({"PatientBirthDate": "20260301", "StudyDate": "20200301"}, None),  # born after the film
        ({}, None),
    ],
)
def test_the_patient_s_age_from_the_header(header, years):
    from pneumolens.data.scope import age_in_years

    ds = pydicom.Dataset()
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    assert age_in_years(ds) == (pytest.approx(years) if years is not None else None)


def test_a_patient_older_than_the_training_children_is_flagged_not_refused(tmp_path, xray, trained_run, monkeypatch):
    """Films of patients older than five carry ``older_than_training`` in every result: the Python API
    (paths and pydicom datasets), the server's engine and the dataset that evaluate and predict use;
    the age itself never shows. PNEUMOLENS_MAX_TRAINING_AGE moves the bound for a model trained on
    other films, ``*`` turns it off, and a malformed value is said at load, by name."""
    from fastapi.testclient import TestClient

    import pneumolens
    from pneumolens.data.dataset import XrayDataset
    from pneumolens.data.scope import OLDER_THAN_TRAINING, header_flags
    from pneumolens.data.sources import Sample
    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    pixels = np.round(xray * 255).astype(np.uint8)
    adult = _with(make_dicom(tmp_path / "adult.dcm", pixels), PatientAge="045Y")
    child = _with(make_dicom(tmp_path / "child.dcm", pixels), PatientAge="071M")  # five years and eleven months
    teen = _with(make_dicom(tmp_path / "teen.dcm", pixels), PatientBirthDate="20120101", StudyDate="20261201")
    jpeg = real_images("test", "PNEUMONIA", 1)[0]
    assert [header_flags(p) for p in (adult, child, teen, jpeg)] == [
        [OLDER_THAN_TRAINING],
        [],
        [OLDER_THAN_TRAINING],
        [],
    ]
    assert header_flags(adult.read_bytes()) == [OLDER_THAN_TRAINING] and header_flags(b"not an image") == []

    model = pneumolens.load(trained_run)
    said = model.predict([str(adult), str(child), pydicom.dcmread(adult)])
    assert OLDER_THAN_TRAINING in said[0].flags and OLDER_THAN_TRAINING not in said[1].flags
    assert OLDER_THAN_TRAINING in said[2].flags  # a pydicom Dataset: its own header
    assert "older than the patients the model learnt from" in said[0].warning
    assert said[0].probability == pytest.approx(said[1].probability)
    item = XrayDataset([Sample(str(adult), 1, "adult")], model.loaded.preprocess, with_flags=True)[0]
    assert OLDER_THAN_TRAINING in item["flags"]
    with TestClient(create_app(Settings(model=str(trained_run), audit=False))) as client:
        r = client.post(
            "/api/v1/predict", files={"file": ("adult.dcm", adult.read_bytes())}, params={"explain": "false"}
        )
    assert r.status_code == 200 and OLDER_THAN_TRAINING in r.json()["flags"], r.text
    assert "045Y" not in r.text and "45 y" not in r.text.lower()

    monkeypatch.setenv("PNEUMOLENS_MAX_TRAINING_AGE", "17")  # a model that learnt from children of any age
    assert [header_flags(p) for p in (adult, child, teen)] == [[OLDER_THAN_TRAINING], [], []]
    monkeypatch.setenv("PNEUMOLENS_MAX_TRAINING_AGE", "*")  # and from every age
    assert header_flags(adult) == []
    monkeypatch.setenv("PNEUMOLENS_MAX_TRAINING_AGE", "children")
    with pytest.raises(ValueError, match="PNEUMOLENS_MAX_TRAINING_AGE='children'"):
        pneumolens.load(trained_run)


def test_an_age_the_sender_gives_flags_a_film_whose_file_says_none(tmp_path, xray, trained_run, caplog, capsys):
    """A JPEG says no age: the Python API, ``predict --age`` and the server's ``age`` form field give
    it, in years or as a DICOM age, and it is used instead of a DICOM header's; a malformed age is
    refused by the field's name, without echoing the value, and no age is returned or logged."""
    import logging

    from fastapi.testclient import TestClient

    import pneumolens
    from pneumolens.cli import main
    from pneumolens.data.scope import OLDER_THAN_TRAINING, given_age
    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    assert [given_age(a) for a in (None, "", 45, "2.5", "030M", "007Y")] == [None, None, 45.0, 2.5, 2.5, 7.0]
    for bad in ("abc", "45 years", -1, 200, float("nan"), True, "1e9"):
        with pytest.raises(ValueError, match="^age: give years") as e:
            given_age(bad)
        assert str(bad) not in str(e.value), bad  # an age above 89 identifies a patient: never echoed
    jpeg = str(real_images("test", "NORMAL", 1)[0])
    adult = _with(make_dicom(tmp_path / "adult.dcm", np.round(xray * 255).astype(np.uint8)), PatientAge="045Y")
    caplog.set_level(logging.DEBUG)
    model = pneumolens.load(trained_run)
    plain, old, young, header = model.predict([jpeg, jpeg, jpeg, str(adult)], age=[None, 45, "030M", 3])
    assert OLDER_THAN_TRAINING not in plain.flags and OLDER_THAN_TRAINING in old.flags
    assert OLDER_THAN_TRAINING not in young.flags
    assert OLDER_THAN_TRAINING not in header.flags  # the age given, 3, instead of the header's 45
    assert OLDER_THAN_TRAINING in model.predict(jpeg, age="17").flags  # one age for one image
    with pytest.raises(ValueError, match="2 ages given for 1 image"):
        model.predict([jpeg], age=[45, 46])
    with pytest.raises(ValueError, match="^age: give years"):
        model.predict(jpeg, age="forty")

    assert main(["predict", jpeg, "--model", str(trained_run), "--json", "--age", "45"]) == 0
    assert OLDER_THAN_TRAINING in json.loads(capsys.readouterr().out)["flags"]
    with pytest.raises(SystemExit) as stop:
        main(["predict", jpeg, "--model", str(trained_run), "--age", "forty-five"])
    assert stop.value.code == 2 and "argument --age: give years" in capsys.readouterr().err

    with TestClient(create_app(Settings(model=str(trained_run), audit=False))) as client:
        data = {"file": ("film.jpeg", open(jpeg, "rb").read())}
        given = client.post("/api/v1/predict", files=data, data={"age": "45"}, params={"explain": "false"})
        none = client.post("/api/v1/predict", files=data, params={"explain": "false"})
        bad = client.post("/api/v1/predict", files=data, data={"age": "91 years"}, params={"explain": "false"})
    assert given.status_code == 200 and OLDER_THAN_TRAINING in given.json()["flags"], given.text
    assert none.status_code == 200 and OLDER_THAN_TRAINING not in none.json()["flags"]
    assert bad.status_code == 422 and bad.json()["detail"].startswith("age: give years") and "91" not in bad.text
    assert set(given.json()) == set(none.json())  # the age adds a flag, no field
    alone = re.compile(r"(?<![\d.])(45|91)(?![\d.])")  # the ages given, not a digit run of a timing or hash
    assert not any(alone.search(r.getMessage()) for r in caplog.records)
