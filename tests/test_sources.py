from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CHEST, real_images
from pneumolens.data.sources import DataLayoutError, find_split, kaggle_samples, patient_id


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1003_virus_1685.jpeg", "person1003"),
        ("person12_bacteria_46.jpeg", "person12"),
        ("IM-0115-0001.jpeg", "IM-115"),
        ("NORMAL2-IM-0115-0001-0002.jpeg", "IM-115"),
        ("IM-0505-0001-0001.jpeg", "IM-505"),
        ("scan.png", "file:scan"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(f"/x/{name}") == patient


def test_kaggle_samples_take_label_and_patient_from_the_path():
    paths = [str(p) for p in real_images("train", "PNEUMONIA", 2) + real_images("train", "NORMAL", 2)]
    samples = kaggle_samples(paths)
    assert [s.path for s in samples] == paths and [s.label for s in samples] == [1, 1, 0, 0]
    assert [s.patient for s in samples] == [patient_id(p) for p in paths]
    listed = {s.path: s for s in find_split(CHEST, "train")}
    assert all(listed[s.path].label == s.label and listed[s.path].patient == s.patient for s in samples)


def test_kaggle_root_and_class_folder():
    train = find_split(CHEST, "train")
    assert len(train) == 1341 + 3875
    assert sum(s.label for s in train) == 3875  # PNEUMONIA is label 1
    test_direct = find_split(CHEST / "test", "test")
    assert len(test_direct) == 624


def test_csv_manifest(tmp_path):
    files = real_images("test", "NORMAL", 2) + real_images("test", "PNEUMONIA", 2)
    rows = ["path,label"] + [f"{f},{f.parent.name}" for f in files[:3]] + [f"{files[3]},1"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = find_split(tmp_path / "m.csv", "test")
    assert [s.label for s in samples] == [0, 0, 1, 1]


def test_class_folders_in_any_case(tmp_path):
    """A set from elsewhere with lower-case class folders, half of it TIFF, is read, labelled as the
    Kaggle one, both by the listing and from a run's split.json paths; two spellings of one class are
    refused."""
    from PIL import Image

    from pneumolens.cli import main

    for name, folder in (("NORMAL", "normal"), ("PNEUMONIA", "Pneumonia")):
        (tmp_path / "test" / folder).mkdir(parents=True)
        first, second = real_images("test", name, 2)
        (tmp_path / "test" / folder / first.name).symlink_to(first)
        Image.open(second).save(tmp_path / "test" / folder / f"{second.stem}.tiff")  # TIFF files are listed too
    samples = find_split(tmp_path / "test", "test")
    assert [s.label for s in samples] == [0, 0, 1, 1] and find_split(tmp_path, "test") == samples
    assert sorted(Path(s.path).suffix for s in samples) == [".jpeg", ".jpeg", ".tiff", ".tiff"]
    assert kaggle_samples([s.path for s in samples]) == samples
    assert main(["evaluate", "--data", str(tmp_path), "--json", str(tmp_path / "m.json")]) == 0
    confusion = json.loads((tmp_path / "m.json").read_text())["confusion_matrix"]
    assert [sum(row) for row in confusion] == [2, 2]  # two normal films, two pneumonia films
    (tmp_path / "test" / "NORMAL").mkdir()
    with pytest.raises(DataLayoutError, match="both NORMAL/ and normal/ hold NORMAL films"):
        find_split(tmp_path, "test")


def test_dicom_files_named_without_a_suffix_are_found(tmp_path, caplog):
    """A PACS's or CD's export names DICOM films ``IM0001`` or by UID: they are listed, labelled and
    grouped by their Patient ID like ``.dcm`` files; a DICOMDIR, a README and a text file with a UID's
    name are not images and are left out, the last two said by name (a DICOMDIR is a CD's index)."""
    import numpy as np

    from conftest import make_dicom
    from pneumolens.data.images import read_image

    for name, folder in (("NORMAL", "NORMAL"), ("PNEUMONIA", "PNEUMONIA")):
        (tmp_path / folder).mkdir()
        film = real_images("test", name, 1)[0]
        pixels = np.round(read_image(film) * 255).astype(np.uint8)
        make_dicom(tmp_path / folder / "IM0001", pixels)
        make_dicom(tmp_path / folder / "1.2.840.113619.2.55.3.17", pixels)
    make_dicom(tmp_path / "NORMAL" / "DICOMDIR", pixels, with_pixels=False)
    (tmp_path / "NORMAL" / "README").write_text("exported by a PACS\n")
    (tmp_path / "PNEUMONIA" / "1.2.3.45").write_text("not an image\n")
    with caplog.at_level("WARNING", logger="pneumolens.data.sources"):
        samples = find_split(tmp_path, "test")
    said = sorted(r.getMessage() for r in caplog.records)
    assert said == [
        f"{tmp_path / 'NORMAL'}: left out 1 file(s) that are not JPEG, PNG, TIFF or DICOM by their name or DICOM "
        "mark: README",
        f"{tmp_path / 'PNEUMONIA'}: left out 1 file(s) that are not JPEG, PNG, TIFF or DICOM by their name or "
        "DICOM mark: 1.2.3.45",
    ]
    assert sorted((Path(s.path).parent.name, Path(s.path).name, s.label) for s in samples) == [
        ("NORMAL", "1.2.840.113619.2.55.3.17", 0),
        ("NORMAL", "IM0001", 0),
        ("PNEUMONIA", "1.2.840.113619.2.55.3.17", 1),
        ("PNEUMONIA", "IM0001", 1),
    ]
    assert {s.patient for s in samples} == {"dicom-patient-1"}  # one Patient ID in make_dicom's files
    assert all(read_image(s.path).shape == pixels.shape for s in samples)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: None, "no train/ folder and no class folders"),
        (lambda d: (d / "NORMAL").mkdir(), "class folder(s) PNEUMONIA missing"),
        (lambda d: ((d / "NORMAL").mkdir(), (d / "PNEUMONIA").mkdir()), "NORMAL: class folder has no"),
        (lambda d: (d / "m.csv").write_text("file,y\na.png,1\n"), None),
    ],
)
def test_bad_layouts_say_what_was_expected(tmp_path, make, match):
    make(tmp_path)
    target = tmp_path / "m.csv" if (tmp_path / "m.csv").exists() else tmp_path
    with pytest.raises(DataLayoutError) as e:
        find_split(target, "train")
    assert str(tmp_path) in str(e.value)
    assert (match or "missing column(s) label, path") in str(e.value)
    if match is None or "missing" in match or "no train/" in match:
        assert "NORMAL/ and PNEUMONIA/" in str(e.value)


def test_kaggle_val_folder_is_pooled_with_train(tmp_path):
    from conftest import link_dataset

    link_dataset(tmp_path, {"train": {"NORMAL": 3, "PNEUMONIA": 3}, "test": {"NORMAL": 2, "PNEUMONIA": 2}})
    for label, f in (
        ("NORMAL", real_images("test", "NORMAL", 3)[-1]),
        ("PNEUMONIA", real_images("test", "PNEUMONIA", 3)[-1]),
    ):
        (tmp_path / "val" / label).mkdir(parents=True)
        (tmp_path / "val" / label / f.name).symlink_to(f)
    assert len(find_split(tmp_path, "train")) == 8
    assert len(find_split(tmp_path, "test")) == 4
