"""Refit: the recipe trained again on every training film, with its held-out twin's operating point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import train_cli
from pneumolens.checkpoint import load_model
from pneumolens.config import resolve_config
from pneumolens.service.engine import Engine
from pneumolens.service.settings import Settings


def test_a_refit_must_keep_the_final_weights():
    assert resolve_config("lung_gamma", refit=True).refit  # the lung_gamma preset keeps the final weights
    with pytest.raises(ValueError, match="start-from-epoch -1"):
        resolve_config("crop_clahe", refit=True)  # crop_clahe chooses its epoch on validation
    with pytest.raises(ValueError, match="one device"):
        resolve_config("lung_gamma", refit=True, devices=2)


def test_refit_trains_on_every_film_and_carries_the_twins_operating_point(tiny_data, tmp_path):
    out = tmp_path / "run"
    flags = ("--refit", "--start-from-epoch", "-1", "--lungs", "none", "--num-workers", "0")
    assert train_cli(tiny_data, out, *flags, preset="crop_clahe", epochs=2) == 0

    twin, refit = load_model(out / "holdout"), load_model(out)
    twin_split = json.loads((out / "holdout" / "split.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert not twin_split["refit"] and split["refit"]
    assert not set(twin_split["train"]) & set(twin_split["val"])  # the twin held its validation films out
    assert sorted(split["train"]) == sorted(twin_split["train"] + twin_split["val"])  # the refit trained on both
    assert refit.meta["training"]["counts"]["train"] == {"NORMAL": 40, "PNEUMONIA": 40}

    # the twin chose the temperature and threshold on its validation films; the refit takes both
    assert twin.meta["calibration"]["threshold_policy"] == "sensitivity:0.97"
    assert refit.meta["threshold"] == twin.meta["threshold"]
    assert refit.meta["calibration"]["temperature"] == twin.meta["calibration"]["temperature"]
    assert refit.meta["calibration"]["carried_from"] == {"run": "holdout", "weights_sha256": twin.sha256}
    # figures on films it trained on are not reported as validation
    assert "val" not in refit.meta["metrics"] and not (out / "val_metrics.json").exists()
    assert refit.meta["metrics"]["holdout_val"] == twin.meta["metrics"]["val"]
    assert refit.meta["metrics"]["trained_on_val"]["n"] == len(split["val"])
    # the service's model card shows the twin's validation figures as the twin's
    card = Engine(Settings(model=str(out))).card()
    assert card["validation_metrics"] is None
    assert card["holdout_twin_validation_metrics"] == twin.meta["metrics"]["val"]
    from pneumolens.evaluation.model_card import model_card  # and so does its Markdown card

    written = model_card(refit)
    assert "| validation of its held-out twin (a refit: it trained on these films too) |" in written
    assert "| validation (chosen on) |" not in written
    # another model: other weights, but the same network
    a, b = twin.model.state_dict(), refit.model.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)


def test_a_refit_leaves_listed_validation_films_out_too(tiny_data, tmp_path):
    from pneumolens.training.fit import training_split

    plain, _ = training_split(tiny_data, resolve_config("lung_gamma"))
    listed = [plain.val[0].path, plain.train[0].path]
    (tmp_path / "list.txt").write_text("\n".join(Path(p).name for p in listed) + "\n")  # bare names
    kept, _ = training_split(tiny_data, resolve_config("lung_gamma", exclude=str(tmp_path / "list.txt")))
    assert listed[0] in {s.path for s in kept.val} and listed[1] not in {s.path for s in kept.train}

    refit, _ = training_split(tiny_data, resolve_config("lung_gamma", refit=True, exclude=str(tmp_path / "list.txt")))
    trained = {s.path for s in refit.train}
    assert trained == {s.path for s in plain.train + plain.val} - set(listed)
    assert sorted(refit.excluded) == sorted(listed)
