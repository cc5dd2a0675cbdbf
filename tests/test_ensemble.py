"""Ensembles: the mean-logit network, its model file, and ``pneumolens ensemble`` on real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import link_dataset, train_cli
from pneumolens.checkpoint import ModelFileError, load_model, save_model
from pneumolens.cli import main
from pneumolens.config import CLASS_NAMES, TrainConfig
from pneumolens.data.sources import find_split
from pneumolens.evaluation.calibration import choose_threshold, fold_temperature
from pneumolens.evaluation.selective import band_for_risk, in_band
from pneumolens.explain import attribution
from pneumolens.export import OnnxModel, export_onnx
from pneumolens.inference import Predictor, predict_samples
from pneumolens.models import create_model
from pneumolens.training.ensemble import build_ensemble
from pneumolens.training.fit import training_split

ARCH = {"name": "resnet_small", "kwargs": {"in_channels": 1, "image_size": 32}}


def two_members() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("ensemble", members=[ARCH, ARCH]).eval()


def test_the_ensemble_is_its_members_mean_logit_and_takes_a_folded_temperature():
    model = two_members()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        a, b = (m(x) for m in model.members)
        assert not torch.allclose(a, b)  # two different initialisations
        assert torch.allclose(model(x), (a + b) / 2)
        fold_temperature(model, 2.5)
        assert torch.allclose(model(x), (a + b) / 5, atol=1e-6)  # folded into both members
    with pytest.raises(ValueError, match="at least 2"):
        create_model("ensemble", members=[ARCH])
    with pytest.raises(ValueError, match="cannot themselves be ensembles"):
        create_model("ensemble", members=[ARCH, {"name": "ensemble", "kwargs": {"members": [ARCH, ARCH]}}])


def test_an_ensemble_file_round_trips_and_exports_to_onnx(tmp_path):
    model = two_members()
    meta = {
        "architecture": {"name": "ensemble", "kwargs": {"members": [ARCH, ARCH]}},
        "preprocessing": {"image_size": 32, "channels": 1},
        "threshold": 0.4,
    }
    loaded = load_model(save_model(tmp_path / "e.safetensors", model, meta))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
        assert np.allclose(loaded.model(x).numpy(), want, atol=1e-6)
    onnx_path = export_onnx(loaded, tmp_path / "e.onnx")
    assert np.allclose(OnnxModel(onnx_path).logits(x.numpy()), want, atol=1e-4)


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members_maps():
    model = two_members()
    x = torch.rand(1, 1, 128, 128)  # 4 x 4 feature maps: at 32 px they are one cell
    same = create_model("ensemble", members=[ARCH, ARCH]).eval()
    same.members[1].load_state_dict(model.members[0].state_dict())
    same.members[0].load_state_dict(model.members[0].state_dict())
    # two identical members: the member's own map, taken before Grad-CAM's ReLU
    raw = attribution._cam(model.members[0], x, 1.0, None, relu=False)
    assert np.allclose(attribution.gradcam(same, x), attribution._normalise(raw[0, 0].clamp_min(0)), atol=1e-5)
    # two different members: each one's map counts, so the mean differs from either alone
    both = attribution.gradcam(model, x)
    assert both.shape == (128, 128) and both.max() == pytest.approx(1.0)
    for member in model.members:
        alone = attribution._normalise(attribution._cam(member, x, 1.0, None, relu=False)[0, 0].clamp_min(0))
        assert not np.allclose(both, alone, atol=1e-3)
    # an explicit layer still names one module of one member
    assert attribution.gradcam(model, x, layer=model.feature_layers[1]).shape == (128, 128)


@pytest.fixture(scope="module")
def second_run(tiny_data, trained_run, tmp_path_factory):
    """A second draw of ``trained_run``'s recipe (seed 4) on its patient split (split seed 3)."""
    out = tmp_path_factory.mktemp("second") / "seed4"
    assert train_cli(tiny_data, out, "--seed", "4", "--split-seed", "3", "--borderline-share", "0.25", epochs=2) == 0
    return out


def test_ensemble_command_fits_its_operating_point_on_the_members_validation_split(
    tiny_data, trained_run, second_run, tmp_path
):
    out = tmp_path / "ens"
    assert main(["ensemble", str(trained_run), str(second_run), "--data", str(tiny_data), "--out", str(out)]) == 0
    ens = load_model(out)
    members = [load_model(trained_run), load_model(second_run)]
    assert ens.meta["architecture"]["name"] == "ensemble"
    assert [m["sha256"] for m in ens.meta["members"]] == [m.sha256 for m in members]
    assert [m["seed"] for m in ens.meta["members"]] == [3, 4]
    # its logit is the members' mean logit over the fitted temperature
    cfg = TrainConfig.from_dict(members[0].meta["config"])
    val = training_split(tiny_data, cfg)[0].val
    z = [predict_samples(m.model, val, m.preprocess, logits=True)[0] for m in (*members, ens)]
    t = ens.meta["calibration"]["temperature"]
    for s in val:
        assert z[2][s.path] == pytest.approx((z[0][s.path] + z[1][s.path]) / 2 / t, abs=1e-4)
    # and its threshold is the members' policy applied on that validation split
    y = np.array([s.label for s in val])
    p = 1 / (1 + np.exp(-np.array([z[2][s.path] for s in val])))
    assert ens.threshold == pytest.approx(choose_threshold(y, p, cfg.threshold_policy), abs=1e-6)
    assert ens.borderline["n"] == len(val) and ens.borderline["low"] <= ens.threshold <= ens.borderline["high"]
    assert ens.borderline["share"] == 0.1  # the first member's; the second was trained with 0.25
    second = load_model(second_run)
    assert second.borderline["share"] == 0.25 and second.meta["config"]["borderline_share"] == 0.25
    from pneumolens.evaluation.model_card import model_card  # its card names its members, not their layers

    card = model_card(ens)
    assert "An ensemble of 2 networks (mean logit): pneumolens-seed, pneumolens-seed" in card
    assert "- Network: `ensemble`, " in card and "Recipe (the first member's): preset `seed`" in card
    first_second = build_ensemble([second_run, trained_run], tiny_data, tmp_path / "ens21")
    assert load_model(first_second).borderline["share"] == 0.25
    wide = tmp_path / "wide"
    argv = ["ensemble", str(trained_run), str(second_run), "--data", str(tiny_data), "--out", str(wide)]
    assert main([*argv, "--borderline-share", "0.3"]) == 0
    band = load_model(wide).borderline
    inside = sum(in_band(float(v), band) for v in p)  # the same network as ens: the same probabilities
    assert band["share"] == 0.3 and abs(inside - 0.3 * len(val)) <= 1 and band["logit_distance"] > 0
    # or the narrowest band leaving the calls outside it wrong at most 60% of the time (a 2-epoch model's
    # calls are poor: the band's own test is in test_selective.py and test_recalibrate.py, on real calls)
    risky = tmp_path / "risky"
    argv = ["ensemble", str(trained_run), str(second_run), "--data", str(tiny_data), "--out", str(risky)]
    assert main([*argv, "--borderline-risk", "0.6"]) == 0
    band = load_model(risky).borderline
    outside = [(float(v) >= ens.threshold) != lab for v, lab in zip(p, y, strict=True) if not in_band(float(v), band)]
    assert band["risk"] == 0.6 and sum(outside) <= 0.6 * len(outside) and band["n"] == len(val)
    assert band["error_rate_outside"] == pytest.approx(sum(outside) / len(outside))
    assert json.loads((out / "val_metrics.json").read_text()) == ens.meta["metrics"]["val"]
    # the file is used like any other: predict (CLI) and evaluate on the test split
    films = [s.path for s in find_split(tiny_data, "test")[:4]]
    got = Predictor(ens).predict_paths(films)
    assert all(g.label in CLASS_NAMES and 0 <= g.probability <= 1 for g in got)
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(out), "--data", str(tiny_data), "--json", str(tmp_path / "m.json")]
    assert main([*args, "--report", str(report), "--explain", "gradcam"]) == 0
    assert (report / "index.html").is_file()
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["n"] == 24 and scored["threshold"] == pytest.approx(ens.threshold)


def test_the_service_serves_and_explains_an_ensemble(tiny_data, trained_run, second_run, tmp_path):
    from fastapi.testclient import TestClient

    from pneumolens.service.app import create_app
    from pneumolens.service.settings import Settings

    out = tmp_path / "ens"
    build_ensemble([trained_run, second_run], tiny_data, out)
    film = find_split(tiny_data, "test")[0].path
    scores = []
    for backend in ("torch", "onnx"):
        with TestClient(create_app(Settings(model=str(out), backend=backend))) as c:
            card = c.get("/api/v1/model").json()
            assert card["architecture"]["name"] == "ensemble" and len(card["members"]) == 2
            with open(film, "rb") as f:
                r = c.post("/api/v1/predict", files={"file": ("x.jpeg", f.read())}, params={"explain": "true"})
            assert r.status_code == 200, r.text
            assert r.json()["heatmap_png"]
            scores.append(r.json()["probability"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


def _variant(loaded, path, config=None, preprocessing=None, nudge=True):
    """A copy of a model file with some recorded fields changed (and, by default, its weights moved)."""
    model = loaded.model
    if nudge:
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
    meta = dict(loaded.meta)
    meta["config"] = {**meta["config"], **(config or {})}
    meta["preprocessing"] = {**meta["preprocessing"], **(preprocessing or {})}
    return save_model(path, model, meta)


def test_members_that_cannot_join_are_refused_by_name(tiny_data, trained_run, second_run, tmp_path, capsys):
    run = str(trained_run)
    other_split = _variant(load_model(trained_run), tmp_path / "split.safetensors", config={"split_seed": 99})
    with pytest.raises(ValueError, match=r"split\.safetensors: validated with patient_split_seed=99"):
        build_ensemble([run, other_split], tiny_data, tmp_path / "a")
    other_input = _variant(load_model(trained_run), tmp_path / "input.safetensors", preprocessing={"equalize": "x"})
    with pytest.raises(ValueError, match=r"input\.safetensors: reads other input.*equalize"):
        build_ensemble([run, other_input], tiny_data, tmp_path / "b")
    refit = _variant(load_model(trained_run), tmp_path / "refit.safetensors", config={"refit": True})
    with pytest.raises(ModelFileError, match=r"refit\.safetensors: a refit"):
        build_ensemble([run, refit], tiny_data, tmp_path / "c")
    other_data = link_dataset(tmp_path / "other", {"train": dict.fromkeys(CLASS_NAMES, 30)})
    with pytest.raises(ValueError, match=r"validated on \d+ films .* gives \d+ .*the data it was trained on"):
        build_ensemble([run, str(second_run)], other_data, tmp_path / "g")
    with pytest.raises(ValueError, match="the same weights"):
        build_ensemble([run, run], tiny_data, tmp_path / "d")
    with pytest.raises(ValueError, match="at least 2"):
        build_ensemble([run], tiny_data, tmp_path / "e")
    # through the CLI: exit code 2, the file named, nothing written
    assert main(["ensemble", run, str(other_split), "--data", str(tiny_data), "--out", str(tmp_path / "f")]) == 2
    assert "split.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_an_ensemble_is_not_written_over_a_member_or_another_model(tiny_data, trained_run, second_run, tmp_path):
    """Before, ``--out`` naming a member's run directory wrote the ensemble over that member's model."""
    import hashlib
    import shutil

    member = tmp_path / "member"
    shutil.copytree(second_run, member)
    before = hashlib.sha256((member / "model.safetensors").read_bytes()).hexdigest()
    for given in (member, member / "model.safetensors"):  # the member named by its folder or its file
        with pytest.raises(ValueError, match=rf"--out {member} is the run directory of the member {given}"):
            build_ensemble([str(trained_run), str(given)], tiny_data, member, overwrite=True)
    assert hashlib.sha256((member / "model.safetensors").read_bytes()).hexdigest() == before
    made = build_ensemble([str(trained_run), str(member)], tiny_data, tmp_path / "ens")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'ens'} holds a model \(model.safetensors\); write into"):
        build_ensemble([str(trained_run), str(member)], tiny_data, tmp_path / "ens")
    first = load_model(made).sha256
    made.write_bytes(b"not the ensemble")  # replaced, not read
    args = ["ensemble", str(trained_run), str(member), "--data", str(tiny_data), "--out", str(tmp_path / "ens")]
    assert main([*args, "--overwrite"]) == 0 and load_model(made).sha256 == first  # the same ensemble, built again


def test_an_ensemble_cannot_be_a_member(tiny_data, trained_run, tmp_path):
    model = two_members()
    arch = {"name": "ensemble", "kwargs": {"members": [ARCH, ARCH]}}
    loaded = load_model(trained_run)
    path = save_model(tmp_path / "ens.safetensors", model, {**loaded.meta, "architecture": arch})
    with pytest.raises(ModelFileError, match=r"ens\.safetensors: already an ensemble"):
        build_ensemble([str(trained_run), path], tiny_data, tmp_path / "out")


def test_an_ensemble_file_can_be_recalibrated_and_teach(tiny_data, trained_run, second_run, tmp_path):
    import dataclasses

    from pneumolens.evaluation.recalibrate import recalibrate
    from pneumolens.training.distill import load_teacher

    ens = load_model(build_ensemble([trained_run, second_run], tiny_data, tmp_path / "ens"))
    # a site's refit: its new temperature divides the logit of the whole ensemble, member by member
    r = recalibrate(ens, tiny_data / "test", policy="sensitivity:0.9", min_per_class=12, n_boot=10)
    x = torch.rand(2, *[ens.preprocess.channels] + [ens.preprocess.image_size] * 2)
    with torch.no_grad():
        assert torch.allclose(r.model(x), ens.model(x) / r.report["temperature"], atol=1e-5)
    # a teacher for distillation: the members' shared split and input pass its checks
    cfg = TrainConfig.from_dict(ens.meta["config"])
    teacher = load_teacher(dataclasses.replace(cfg, teacher=str(tmp_path / "ens"), distill_weight=1.0))
    assert len(teacher.members) == 2 and not any(p.requires_grad for p in teacher.parameters())


def test_a_band_bounded_at_a_confidence_is_set_by_training_and_kept_by_an_ensemble(
    tiny_data, trained_run, tmp_path, capsys
):
    """``--borderline-risk R --borderline-confidence C``: the trained model's band is the narrowest one
    whose calls outside are wrong at most R of the time by their Clopper-Pearson bound at C (or, where
    its validation films cannot give that, the share band with both recorded as not met); an
    ensemble led by that run keeps the rule, confidence included."""
    out = tmp_path / "sure"
    rule = ("--borderline-risk", "0.5", "--borderline-confidence", "0.6")
    assert train_cli(tiny_data, out, "--seed", "5", "--split-seed", "3", *rule, epochs=1) == 0
    run = load_model(out)
    assert (run.meta["config"]["borderline_risk"], run.meta["config"]["borderline_confidence"]) == (0.5, 0.6)
    val = training_split(tiny_data, TrainConfig.from_dict(run.meta["config"]))[0].val
    probs, _ = predict_samples(run.model, val, run.preprocess)
    y, p = [s.label for s in val], [probs[s.path] for s in val]
    sure = band_for_risk(y, p, run.threshold, 0.5, confidence=0.6)
    assert run.borderline == pytest.approx(sure)
    assert sure["share"] > band_for_risk(y, p, run.threshold, 0.5)["share"]  # the bound asks for a wider band
    ens = tmp_path / "ens"
    assert main(["ensemble", str(out), str(trained_run), "--data", str(tiny_data), "--out", str(ens)]) == 0
    led = load_model(ens)
    probs, _ = predict_samples(led.model, val, led.preprocess)
    kept = band_for_risk(y, [probs[s.path] for s in val], led.threshold, 0.5, confidence=0.6)
    assert led.borderline == pytest.approx(kept, abs=1e-5) and (kept["risk"], kept["confidence"]) == (0.5, 0.6)
    # a confidence bounds a risk: alone it is refused by name before any film is read
    alone = ["--borderline-confidence", "0.9"]
    assert main(["ensemble", str(out), str(trained_run), "--data", str(tiny_data), "--out", str(ens), *alone]) == 2
    assert train_cli(tiny_data, tmp_path / "never", *alone) == 2
    assert "borderline_confidence bounds the error rate of borderline_risk" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
