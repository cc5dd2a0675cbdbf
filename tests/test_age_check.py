"""The adult-film check: its threshold rule, the films it holds out, and its training."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import SHARED, nlm_subset, real_images
from pneumolens.checkpoint import shipped_model_path
from pneumolens.cli import main
from pneumolens.data.images import read_image
from pneumolens.lungs.age_check import AgeCheck
from pneumolens.lungs.train_age_check import AgeCheckConfig, film_sets, held_out, threshold_for

MASKS = SHARED / "lung_masks"


def test_the_threshold_flags_at_most_the_share_of_children_and_is_never_below_one_half():
    children = np.array([0.05, 0.2, 0.31, 0.62, 0.9])  # 5 films: 1% allows none; 20% allows one
    assert threshold_for(children, 0.01) == pytest.approx(0.9001)  # just above the highest child
    assert threshold_for(children, 0.2) == pytest.approx(0.6201)  # the 0.9 child flagged, 0.62 not
    assert np.mean(children >= threshold_for(children, 0.2)) == pytest.approx(0.2)
    assert threshold_for(np.array([0.1, 0.2, 0.3]), 0.01) == 0.5  # children all low: 0.5 stands
    assert threshold_for(np.array([0.1]), 1.0) == 0.5


def test_no_shenzhen_child_and_no_held_out_adult_is_trained_or_validated_on(tiny_data):
    """The Shenzhen children are the test of whether the check learnt the age or the hospital: none may
    be seen in training or validation; the adults are split by the manifest's rows."""
    sets = film_sets(tiny_data, MASKS, AgeCheckConfig())
    groups = held_out(MASKS)
    with open(MASKS / "manifest.csv", newline="") as f:
        ages = {r["id"]: r["age"] for r in csv.DictReader(f)}
    seen = {p for part in sets.values() for p, _ in part}
    for name, paths in groups.items():
        assert not seen & set(paths), name
    assert [len(v) for v in groups.values()] == [55, 12, 11, 137]  # the manifest's counts
    assert all(1 <= int(ages[p.stem]) <= 5 for p in groups["Shenzhen children aged 1-5"])
    adults = [p for part in sets.values() for p, y in part if y == 1]
    assert len(adults) == 432 + 54 and all(int(ages[p.stem]) >= 18 for p in adults)
    assert all(p.stem.startswith("CHNCXR") for p in adults)
    kaggle = [p for part in sets.values() for p, y in part if y == 0]
    assert len(kaggle) == 80 and all("chest_xray" in str(p) or "tiny" in str(p) for p in kaggle)


def test_train_age_check_writes_a_check_that_loads(tiny_data, tmp_path, capsys):

    def five_adults_a_split(rows):
        adults = [r for r in rows if r["source"] == "shenzhen" and r["age"] and int(r["age"]) >= 18]
        return [r for s in ("train", "val") for r in [r for r in adults if r["split"] == s][:5]]

    nlm = nlm_subset(tmp_path / "nlm", five_adults_a_split)
    out = tmp_path / "age"
    argv = ["train-age-check", "--data", str(tiny_data), "--lung-masks", str(nlm), "--out", str(out), "--epochs", "1"]
    assert main(argv) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith("looks_adult.safetensors")
    check = AgeCheck.from_file(path)
    meta = check.loaded.meta
    films = meta["training"]["films"]
    assert films["train"]["adults"] == 5 and films["val"]["adults"] == 5
    assert films["train"]["children"] + films["val"]["children"] == 80
    assert check.threshold >= 0.5 and meta["metrics"]["val_children_flagged"] <= 0.01 + 1e-9
    assert meta["preprocessing"]["lungs"] == "crop" and meta["preprocessing"]["equalize"] == "clahe"
    grays = [read_image(p) for p in real_images("test", "NORMAL", 2)]
    p = check.probabilities(grays)
    assert p.shape == (2,) and ((0 <= p) & (p <= 1)).all()


def test_another_model_file_is_refused_by_name():
    with pytest.raises(ValueError, match="not an age check"):
        AgeCheck.from_file(shipped_model_path())


def test_the_benchmark_table_counts_films_at_or_above_the_threshold():
    from conftest import load_benchmark

    table = load_benchmark("age_check").flag_table({"a": np.array([0.1, 0.5, 0.9]), "b": np.array([0.2])}, 0.5, "m")
    lines = table.splitlines()
    assert lines[0] == "| films | n | flagged | share [95% interval] | m |"
    assert lines[2] == "| a | 3 | 2 | 66.7% [20.8%, 93.9%] | 0.500 |"  # Wilson's interval for 2 of 3
    assert lines[3] == "| b | 1 | 0 | 0.0% [0.0%, 79.3%] | 0.200 |"
