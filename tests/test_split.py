from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CHEST, real_images
from pneumolens.data.sources import Sample, find_split
from pneumolens.data.split import patient_split, stratified_subset


@pytest.fixture(scope="module")
def full_train():
    return find_split(CHEST, "train")


@pytest.fixture(scope="module")
def split(full_train):
    return patient_split(full_train, val_fraction=0.15, seed=42)


def test_no_patient_in_two_splits(split, full_train):
    train_patients = {s.patient for s in split.train}
    val_patients = {s.patient for s in split.val}
    assert not train_patients & val_patients
    assert len(split.train) + len(split.val) == len(full_train)
    assert {s.path for s in split.train}.isdisjoint(s.path for s in split.val)


def test_split_is_stratified_and_sized(split, full_train):
    share = sum(s.label for s in full_train) / len(full_train)
    val_share = sum(s.label for s in split.val) / len(split.val)
    assert abs(val_share - share) < 0.03
    assert 0.12 < len(split.val) / len(full_train) < 0.18


def test_duplicates_are_reported_and_kept_together(split):
    assert split.duplicates, "the Kaggle train split holds byte-identical copies"
    val_paths = {s.path for s in split.val}
    for group in split.duplicates:
        assert len({p in val_paths for p in group}) == 1  # all in train or all in val


def test_identical_files_of_different_patients_share_a_side(tmp_path):
    # Two "patients" whose files are byte-identical must not be split apart.
    src = real_images("train", "NORMAL", 30)
    samples = [Sample(str(f), 0, f"p{i}") for i, f in enumerate(src)]
    pneu = real_images("train", "PNEUMONIA", 30)
    samples += [Sample(str(f), 1, f"q{i}") for i, f in enumerate(pneu)]
    twin = tmp_path / "twin.jpeg"
    twin.write_bytes(src[0].read_bytes())
    samples.append(Sample(str(twin), 0, "someone-else"))
    for seed in range(5):
        sp = patient_split(samples, 0.3, seed)
        in_val = {s.path for s in sp.val}
        assert (str(twin) in in_val) == (str(src[0]) in in_val)


def test_same_seed_same_split(full_train):
    a = patient_split(full_train[:600] + full_train[-600:], 0.2, 7)
    b = patient_split(full_train[:600] + full_train[-600:], 0.2, 7)
    assert [s.path for s in a.val] == [s.path for s in b.val]


def test_stratified_subset(full_train):
    sub = stratified_subset(full_train, 100, seed=0)
    assert len(sub) == 100
    assert 70 <= sum(s.label for s in sub) <= 78  # 74.3% pneumonia in train/


def test_patient_folds_cover_every_film_once_and_keep_patients_whole(split):
    from pneumolens.data.split import patient_folds

    samples = split.train  # the training part of the real split, as benchmarks/label_issues.py folds it
    folds = patient_folds(samples, 3, seed=42)
    assert len(folds) == 3
    indices = sorted(i for f in folds for i in f.tolist())
    assert indices == list(range(len(samples)))  # each film held out exactly once
    patients = [{samples[i].patient for i in f} for f in folds]
    assert all(a.isdisjoint(b) for j, a in enumerate(patients) for b in patients[j + 1 :])
    share = sum(s.label for s in samples) / len(samples)
    for f in folds:  # stratified: each fold's pneumonia share near the whole's
        assert abs(sum(samples[i].label for i in f) / len(f) - share) < 0.03
    with pytest.raises(ValueError, match="at least k patients"):
        patient_folds(samples[:2], 3, seed=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# doubted labels\na.jpeg\n\n  b.jpeg  \n", ["a.jpeg", "b.jpeg"]),
        ("path,label,p_pneumonia\nx/a.jpeg,NORMAL,0.9\nb.jpeg,PNEUMONIA,0.1\n", ["x/a.jpeg", "b.jpeg"]),
        ("label,path\nNORMAL,a.jpeg\n", ["a.jpeg"]),
        ("", []),
    ],
)
def test_read_exclusions(tmp_path, text, expected):
    from pneumolens.data.split import read_exclusions

    f = tmp_path / "exclude.txt"
    f.write_text(text)
    assert read_exclusions(f) == expected


def test_read_exclusions_refuses_what_it_cannot_use(tmp_path):
    from pneumolens.data.split import read_exclusions

    with pytest.raises(ValueError, match="nope.txt: cannot read"):
        read_exclusions(tmp_path / "nope.txt")
    (tmp_path / "x.csv").write_text("file,label\na.jpeg,NORMAL\n")
    with pytest.raises(ValueError, match="x.csv: a CSV exclusion list needs a 'path' column"):
        read_exclusions(tmp_path / "x.csv")


def test_exclusions_leave_training_files_out_and_validation_whole(split, caplog):
    from pneumolens.data.split import exclude_from_training

    by_name, by_path, in_val = split.train[0], split.train[5], split.val[0]
    entries = [Path(by_name.path).name, by_path.path, Path(in_val.path).name]
    with caplog.at_level("WARNING"):
        kept = exclude_from_training(split, entries, "list.txt")
    assert sorted(kept.excluded) == sorted([by_name.path, by_path.path])
    assert len(kept.train) == len(split.train) - 2 and by_name not in kept.train and by_path not in kept.train
    assert kept.val == split.val  # validation never changes: runs with and without the list compare on it
    assert "list.txt: 1 listed file(s) are in validation and stay there" in caplog.text
    with pytest.raises(ValueError, match="list.txt: 1 entry matches no training image, e.g. 'missing.jpeg'"):
        exclude_from_training(split, ["missing.jpeg"], "list.txt")
    with pytest.raises(ValueError, match="2 entries match no training image"):
        exclude_from_training(split, ["a/missing.jpeg", "b.jpeg"], "list.txt")


def test_exclusions_refuse_an_ambiguous_file_name_and_an_emptied_class(tmp_path):
    from pneumolens.data.split import Split, exclude_from_training

    a = Sample(str(tmp_path / "NORMAL" / "x.jpeg"), 0, "p1")
    b = Sample(str(tmp_path / "PNEUMONIA" / "x.jpeg"), 1, "p2")
    c = Sample(str(tmp_path / "PNEUMONIA" / "y.jpeg"), 1, "p3")
    whole = Split([a, b, c], [], [])
    with pytest.raises(ValueError, match="the file name 'x.jpeg' names several images; give its path"):
        exclude_from_training(whole, ["x.jpeg"])
    kept = exclude_from_training(whole, [b.path])
    assert kept.train == [a, c] and kept.excluded == [b.path]
    with pytest.raises(ValueError, match="list.txt: leaves no PNEUMONIA image to train on"):
        exclude_from_training(whole, [b.path, "y.jpeg"], "list.txt")
