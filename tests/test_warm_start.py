"""Fine-tuning a trained model (``train --init MODEL``) and weight averages of fine-tunes
(``ensemble --average-weights``), on real films."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_cli
from pneumolens.checkpoint import load_model, save_model
from pneumolens.cli import main
from pneumolens.config import TrainConfig, resolve_config
from pneumolens.evaluation.calibration import choose_threshold
from pneumolens.explain import attribution
from pneumolens.inference import predict_samples
from pneumolens.service.engine import Engine
from pneumolens.service.settings import Settings
from pneumolens.training.ensemble import build_ensemble
from pneumolens.training.fit import training_split
from pneumolens.training.warm_start import starting_model


@pytest.fixture(scope="module")
def start(tiny_data, tmp_path_factory):
    """A calibrated default-preset run at 32 px (seed 3): its temperature is folded into its last layer."""
    out = tmp_path_factory.mktemp("start") / "base"
    assert train_cli(tiny_data, out, "--seed", "3", preset="default", epochs=2) == 0
    return out


@pytest.fixture(scope="module")
def fine_tunes(tiny_data, start, tmp_path_factory):
    """Two one-epoch fine-tunes of ``start`` (seeds 5 and 6) on its split."""
    root = tmp_path_factory.mktemp("fine")
    for seed in (5, 6):
        out = root / f"ft{seed}"
        assert train_cli(tiny_data, out, "--init", str(start), "--seed", str(seed), preset="default") == 0
    return [root / "ft5", root / "ft6"]


def _cfg(run) -> TrainConfig:
    return TrainConfig.from_dict(load_model(run).meta["config"])


def test_a_fine_tune_starts_from_every_weight_of_the_trained_model_unfolded(tiny_data, start, tmp_path, monkeypatch):
    import pneumolens.training.fit as fit_module
    from pneumolens.training.warm_start import load_init

    trained = load_model(start)
    t = trained.meta["calibration"]["temperature"]
    assert trained.meta["calibration"]["folded_into"] == "fc" and t != pytest.approx(1.0)
    begun = starting_model(start, _cfg(start))
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():  # the temperature taken back out: the network's raw logit, as trained
        assert torch.allclose(begun.model(x), trained.model(x) * t, atol=1e-5)
    started = []

    def recording_init(model, path, cfg):
        sha = load_init(model, path, cfg)
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        return sha

    monkeypatch.setattr(fit_module, "load_init", recording_init)
    out = tmp_path / "ft"
    assert train_cli(tiny_data, out, "--init", str(start), "--seed", "7", preset="default") == 0
    # the trial network checks the file before any data is read, then the trained network starts from it
    assert len(started) == 2
    for state in started:
        assert all(torch.equal(v, begun.model.state_dict()[k]) for k, v in state.items())
    tuned = load_model(out)
    assert tuned.meta["training"]["init_sha256"] == trained.sha256
    assert tuned.sha256 != trained.sha256  # and it trained from there


def _copy(loaded, path, config=None, training=None):
    meta = {**loaded.meta, "config": {**loaded.meta["config"], **(config or {})}}
    meta["training"] = {**loaded.meta.get("training", {}), **(training or {})}
    return save_model(path, loaded.model, meta)


def test_a_model_that_cannot_be_a_start_is_refused_by_name(tiny_data, start, tmp_path):
    from pneumolens.training.fit import fit

    trained = load_model(start)
    cases = [
        (str(start), {"split_seed": 9}, r"base/model\.safetensors: the start was trained with patient_split_seed=42"),
        (str(start), {"image_size": 48}, r"base/model\.safetensors: the start reads other input.*image_size"),
        (str(start), {"model_kwargs": {"dropout": 0.5}}, r"base/model\.safetensors: architecture"),
        (_copy(trained, tmp_path / "refit.safetensors", {"refit": True}), {}, r"refit\.safetensors: a refit"),
    ]
    for i, (init, overrides, message) in enumerate(cases):
        cfg = resolve_config("default", **{"image_size": 32, "init": init, **overrides})
        with pytest.raises(ValueError, match=message):
            fit(tiny_data, cfg, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists()  # refused before anything was read or written
    with pytest.raises(FileNotFoundError, match=r"nothing: no such file or run directory"):
        fit(tiny_data, resolve_config("default", image_size=32, init=str(tmp_path / "nothing")), tmp_path / "x")


def test_a_start_or_teacher_may_have_left_out_more_films_than_the_run_never_fewer(tiny_data, start, tmp_path):
    from pneumolens.training.fit import fit

    whole, _ = training_split(tiny_data, _cfg(start))  # the start trained on whole.train, no list
    (tmp_path / "val.txt").write_text(whole.val[0].path + "\n")
    (tmp_path / "train.txt").write_text(whole.train[0].path + "\n")

    # a refit on every validation film but one: the start saw none of them, and nothing the run leaves out
    out = tmp_path / "partial_refit"
    flags = ("--init", str(start), "--seed", "5", "--refit", "--exclude", str(tmp_path / "val.txt"))
    assert train_cli(tiny_data, out, *flags, preset="default") == 0
    trained = json.loads((out / "split.json").read_text())["train"]
    assert sorted(trained) == sorted(s.path for s in whole.train + whole.val[1:])
    assert load_model(out).meta["training"]["init_sha256"] == load_model(start).sha256

    # a run that leaves out a film the start trained on is refused, naming the film, before anything is written
    cfg = resolve_config("default", image_size=32, init=str(start), exclude=str(tmp_path / "train.txt"))
    name = Path(whole.train[0].path).name
    with pytest.raises(ValueError, match=rf"the start trained on 1 film\(s\) that this run does not train on.*{name}"):
        fit(tiny_data, cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    # as is a teacher that trained on this run's validation films (a refit), which shares its split fields
    refit_teacher = _copy(load_model(start), tmp_path / "refit_teacher.safetensors", {"refit": True})
    cfg = resolve_config("default", image_size=32, teacher=str(refit_teacher), distill_weight=1.0)
    message = rf"the teacher trained on {len(whole.val)} film\(s\) that this run does not train on.*refit=True"
    with pytest.raises(ValueError, match=message):
        fit(tiny_data, cfg, tmp_path / "refused_teacher")
    assert not (tmp_path / "refused_teacher").exists()


def test_average_weights_gives_one_network_of_the_fine_tunes_mean_weights(tiny_data, fine_tunes, tmp_path):
    out = tmp_path / "soup"
    args = ["ensemble", *map(str, fine_tunes), "--average-weights", "--data", str(tiny_data), "--out", str(out)]
    assert main(args) == 0
    soup = load_model(out)
    members = [load_model(f) for f in fine_tunes]
    assert soup.meta["architecture"] == members[0].meta["architecture"]  # one network, not a mean logit
    assert [m["sha256"] for m in soup.meta["averaged_weights_of"]] == [m.sha256 for m in members]
    # every weight the mean of the members' (their folded temperatures out), the soup's own folded in
    scale = {id(m): m.meta["calibration"]["temperature"] for m in [*members, soup]}
    for k, v in soup.model.state_dict().items():
        got = v.float() * (scale[id(soup)] if k.startswith("fc.") else 1)
        parts = [m.model.state_dict()[k].float() * (scale[id(m)] if k.startswith("fc.") else 1) for m in members]
        if v.is_floating_point():
            assert torch.allclose(got, sum(parts) / len(parts), atol=1e-5), k
    assert not torch.equal(members[0].model.state_dict()["fc.weight"], members[1].model.state_dict()["fc.weight"])
    # its threshold: the members' policy on their validation split
    cfg = _cfg(fine_tunes[0])
    val = training_split(tiny_data, cfg)[0].val
    p = predict_samples(soup.model, val, soup.preprocess)[0]
    y = np.array([s.label for s in val])
    assert soup.threshold == pytest.approx(choose_threshold(y, [p[s.path] for s in val], cfg.threshold_policy))
    # used like one trained network: Grad-CAM on its own layer, the service's card names what it averages
    x = torch.rand(1, 1, 32, 32)
    assert attribution.gradcam(soup.model, x).shape == (32, 32)
    card = Engine(Settings(model=str(out))).card()
    assert [m["seed"] for m in card["averaged_weights_of"]] == [5, 6] and "members" not in card


def test_only_fine_tunes_of_one_start_average(tiny_data, start, fine_tunes, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"base/model\.safetensors: not fine-tuned from a trained model"):
        build_ensemble([start, fine_tunes[0]], tiny_data, tmp_path / "a", average_weights=True)
    other = _copy(load_model(fine_tunes[1]), tmp_path / "other.safetensors", training={"init_sha256": "ab" * 32})
    with pytest.raises(ValueError, match=r"other\.safetensors: fine-tuned from weights abababababab"):
        build_ensemble([fine_tunes[0], other], tiny_data, tmp_path / "b", average_weights=True)
    args = ["ensemble", str(start), str(fine_tunes[0]), "--average-weights", "--data", str(tiny_data)]
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert "not fine-tuned" in capsys.readouterr().err and not (tmp_path / "c").exists()
    # without --average-weights the same two files make a mean-logit ensemble as before
    assert build_ensemble([start, fine_tunes[0]], tiny_data, tmp_path / "d").is_file()
