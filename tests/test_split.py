from __future__ import annotations

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
