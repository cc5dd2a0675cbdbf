from __future__ import annotations

import dataclasses
import json

import pytest

from pneumolens.config import PRESETS, TrainConfig, resolve_config


def test_seed_preset_is_the_blog_recipe():
    c = PRESETS["seed"]
    assert (c.preprocess.image_size, c.preprocess.channels, c.batch_size) == (64, 3, 32)
    assert (c.augment.rotation, c.augment.shift, c.augment.zoom) == (10.0, 0.2, 0.1)
    assert (c.optimizer, c.lr, c.patience, c.scheduler, c.class_weights) == ("rmsprop", 1e-3, 3, "plateau", "seed")


def test_the_presets_of_the_shipped_models():
    default, gamma, crop = PRESETS["default"], PRESETS["lung_gamma"], PRESETS["crop_clahe"]
    # lung_gamma: the recipe shipped until round 25 with three changes (rounds 20, 24, 25)
    assert gamma == dataclasses.replace(
        resolve_config("crop_clahe", lung_gamma=0.45, epochs=24, start_from_epoch=-1), preset="lung_gamma"
    )
    # default: lung_gamma, 32 epochs, seed 17 (round 26's draw, the shipped model's start)
    assert default == dataclasses.replace(resolve_config("lung_gamma", epochs=32, seed=17), preset="default")
    d = default
    assert (d.preprocess.lung_gamma, d.epochs, d.first_watched_epoch, d.seed) == (0.45, 32, 31, 17)
    assert (gamma.epochs, gamma.first_watched_epoch, gamma.seed) == (24, 23, 1)
    assert (crop.preprocess.lung_gamma, crop.epochs, crop.first_watched_epoch, crop.seed) == (0, 16, 0, 1)
    for c in (default, gamma, crop):
        assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(("epochs", "start", "first"), [(8, None, 7), (1, None, 0), (8, 3, 3), (8, -8, 0), (8, 0, 0)])
def test_a_negative_start_epoch_counts_from_the_end(epochs, start, first):
    # the default keeps the final weights (-1) whatever --epochs says
    assert resolve_config("default", epochs=epochs, start_from_epoch=start).first_watched_epoch == first


@pytest.mark.parametrize("start", [8, 20, -9])
def test_a_start_epoch_outside_the_run_is_refused(start):
    with pytest.raises(ValueError, match=r"start_from_epoch must be in \[-epochs, epochs\) = \[-8, 8\), got"):
        resolve_config("default", epochs=8, start_from_epoch=start)


def test_overrides_reach_nested_configs_and_round_trip():
    c = resolve_config("default", image_size=96, zoom=0.2, epochs=3, seed=None)
    assert c.preprocess.image_size == 96 and c.augment.zoom == 0.2 and c.epochs == 3
    assert c.seed == PRESETS["default"].seed  # None means "keep the preset's value"
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 8}, "at least 16"),
        ({"zoom": 1.5}, "augmentation ranges"),
        ({"shift": -0.1}, "augmentation"),
        ({"contrast": 1.0}, "contrast < 1"),
        ({"lung_margin": 0.6}, "lung_margin"),
        ({"clahe_clip": 0}, "clahe_clip"),
        ({"borderline_share": 1.0}, "borderline_share"),
        ({"borderline_risk": 0.0}, "borderline_risk"),
        ({"borderline_risk": 0.02, "borderline_share": 0.2}, "give one"),
        ({"borderline_confidence": 0.95}, "bounds the error rate of borderline_risk"),
        ({"borderline_risk": 0.02, "borderline_confidence": 1.0}, "borderline_confidence must be in"),
    ],
)
def test_bad_overrides(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_config("seed", **kwargs)
    with pytest.raises(ValueError, match="valid: seed, default|valid: default, seed"):
        resolve_config("huge")


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"epochz": 3})


def test_a_run_recorded_before_a_field_existed_is_the_same_recipe():
    cfg = resolve_config("default", epochs=8)
    recorded = json.loads(cfg.to_json())
    assert cfg.is_recorded_in(recorded)
    del recorded["borderline_share"]  # the config.json of a run trained before the field was added
    assert cfg.is_recorded_in(recorded)
    assert not resolve_config("default", epochs=8, borderline_share=0.2).is_recorded_in(recorded)
    assert not cfg.is_recorded_in({**recorded, "epochs": 9})
    assert not cfg.is_recorded_in({**recorded, "epochz": 8})  # an unknown field: not this recipe


def test_recipe_flags_reach_the_config():
    from pneumolens.cli import RECIPE_FLAGS, build_parser
    from pneumolens.models import create_model
    from pneumolens.training.module import architecture_of

    argv = "train --data d --weight-decay 0.05 --split-seed 7 --lung-margin 0.1 --gamma 0.2 --contrast 0.1 --mixup 0.2"
    argv += ' --hflip 0.5 --erase 0.3 --label-smoothing 0.1 --model-kwargs {"widths":[8,16,16,24],"dropout":0.5}'
    argv += " --start-from-epoch 6 --patience 2 --ema-warmup --blur 1.5 --subtype-weight 0 --clahe-clip 0.03"
    argv += " --optimizer sgd --patient-weighting --borderline-share 0.2"
    args = build_parser().parse_args(argv.split())
    cfg = resolve_config("default", **{k: getattr(args, k) for k in RECIPE_FLAGS})
    assert (cfg.weight_decay, cfg.split_seed, cfg.preprocess.lung_margin) == (0.05, 7, 0.1)
    assert cfg.borderline_share == 0.2
    risky = build_parser().parse_args("train --data d --borderline-risk 0.02".split())
    assert resolve_config("default", **{k: getattr(risky, k) for k in RECIPE_FLAGS}).borderline_risk == 0.02
    sure = build_parser().parse_args("train --data d --borderline-risk 0.02 --borderline-confidence 0.95".split())
    assert resolve_config("default", **{k: getattr(sure, k) for k in RECIPE_FLAGS}).borderline_confidence == 0.95
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args("train --data d --borderline-risk 0.02 --borderline-share 0.2".split())
    assert cfg.preprocess.clahe_clip == 0.03 and cfg.optimizer == "sgd" and cfg.patient_weighting
    assert (cfg.augment.gamma, cfg.augment.contrast, cfg.augment.mixup) == (0.2, 0.1, 0.2)
    assert (cfg.augment.hflip, cfg.augment.erase, cfg.label_smoothing) == (0.5, 0.3, 0.1)
    assert (cfg.start_from_epoch, cfg.patience, cfg.ema_warmup, cfg.augment.blur) == (6, 2, True, 1.5)
    aux = build_parser().parse_args("train --data d --subtype-weight 0.3".split())
    assert resolve_config("default", **{k: getattr(aux, k) for k in RECIPE_FLAGS}).subtype_weight == 0.3
    arch = architecture_of(cfg)
    net = create_model(arch["name"], **arch["kwargs"])
    assert net.fc.in_features == 24 and net.drop.p == 0.5  # the architecture arguments reach the network
    assert cfg.seed == 17 and cfg.augment.rotation == 10.0  # untouched fields keep the preset's values


@pytest.mark.parametrize("name, kind", [("rmsprop", "RMSprop"), ("adamw", "AdamW"), ("sgd", "SGD")])
def test_optimizer_choice_builds_that_optimizer(name, kind):
    import dataclasses

    from pneumolens.training.module import Classifier

    cfg = dataclasses.replace(resolve_config("default", lr=0.05, weight_decay=5e-4), optimizer=name, warmup_epochs=0)
    opt = Classifier(cfg.to_dict(), [1.0, 1.0]).configure_optimizers()["optimizer"]
    assert type(opt).__name__ == kind and opt.defaults["lr"] == 0.05 and opt.defaults["weight_decay"] == 5e-4
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]


# ------------------------------------------------------------------------------- train --config FILE


def _config_of(*argv: str) -> TrainConfig:
    from pneumolens.cli import build_parser, train_config

    return train_config(build_parser().parse_args(["train", "--data", "DATA", *argv]))


def test_a_runs_own_config_trains_it_again(trained_run, tmp_path):
    """A run's config.json given back is that run's recipe, field for field, and so is the shipped
    model's (written before some fields existed, with a start and a teacher); a flag goes on top."""
    from pneumolens.checkpoint import load_model

    recorded = json.loads((trained_run / "config.json").read_text())
    assert recorded["preset"] == "seed" and _config_of("--config", str(trained_run / "config.json")) == (
        TrainConfig.from_dict(recorded)
    )
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps(load_model().meta["config"]))
    cfg = _config_of("--config", str(shipped))
    assert cfg.is_recorded_in(load_model().meta["config"]) and cfg.init and cfg.teacher
    assert _config_of("--config", str(shipped), "--epochs", "3") == dataclasses.replace(cfg, epochs=3)


def test_a_yaml_file_sets_some_fields_over_its_preset_and_flags_go_on_top(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(
        "preset: lung_gamma\nepochs: 5\nlr: 0.0005\nsplit_seed: null\n"
        "preprocess: {image_size: 96, interpolation: bicubic}\naugment: {rotation: 3}\n"
    )
    cfg = _config_of("--config", str(f), "--epochs", "7")
    base = PRESETS["lung_gamma"]
    assert cfg == dataclasses.replace(
        base,
        epochs=7,  # the flag wins over the file
        lr=0.0005,
        split_seed=None,
        preprocess=dataclasses.replace(base.preprocess, image_size=96, interpolation="bicubic"),
        augment=dataclasses.replace(base.augment, rotation=3.0),
    )
    assert isinstance(cfg.augment.rotation, float)
    assert _config_of("--config", str(f), "--preset", "crop_clahe").preset == "crop_clahe"  # --preset too


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epoch: 5\n", r"exp\.yaml: unknown config field 'epoch'"),
        ("augment: {rotate: 5}\n", r"exp\.yaml: unknown config field 'augment\.rotate'"),
        ("lr: 1e-3\n", r"exp\.yaml: lr must be a number, got '1e-3' \(YAML reads 1e-3 as text: write 1\.0e-3\)"),
        ("epochs: 2.5\n", r"exp\.yaml: epochs must be an integer, got 2\.5"),
        ("lr: none\n", r"exp\.yaml: lr must be a number, got 'none'$"),  # no word on exponents here
        ("preprocess: {lungs: both}\n", r"exp\.yaml: preprocess\.lungs must be one of 'none', 'crop'"),
        ("calibrate: yes please\n", r"exp\.yaml: calibrate must be true or false"),
        ("preprocess: {lung_margin: 0.7}\n", r"exp\.yaml: lung_margin must be in \[0, 0\.5\)"),
        ("preset: fancy\n", r"exp\.yaml: unknown preset 'fancy'"),
        ("- epochs: 5\n", r"exp\.yaml: a config is a mapping of fields, got list"),
        ("epochs: [5\n", r"exp\.yaml: not a readable JSON or YAML config"),
        ("augment: 5\n", r"exp\.yaml: augment is a mapping of fields, got 5"),
        # values a flag's type would have refused (--epochs 0 is argparse's error) or no check bounded
        ("epochs: 0\n", r"exp\.yaml: epochs must be at least 1, got 0 \(--epochs\)"),
        ("batch_size: 0\n", r"exp\.yaml: batch_size must be at least 1, got 0"),
        ("lr: -1.0e-3\n", r"exp\.yaml: lr must be > 0, got -0\.001 \(--lr\)"),
        ("weight_decay: -0.1\n", r"exp\.yaml: weight_decay must be >= 0"),
        ("ema_decay: 1.5\n", r"exp\.yaml: ema_decay must be in \[0, 1\) \(0: off\), got 1\.5"),
        ("val_fraction: 1\n", r"exp\.yaml: val_fraction must be in \(0, 1\), got 1"),
        ("num_workers: -1\n", r"exp\.yaml: num_workers must be >= 0"),
        ("warmup_epochs: -2\n", r"exp\.yaml: warmup_epochs must be >= 0"),
        ("augment: {rotation: 400}\n", r"exp\.yaml: rotation is at most 180 degrees either way, got 400"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_field(tmp_path, capsys, text, match):
    from pneumolens.cli import main

    f = tmp_path / "exp.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        _config_of("--config", str(f))
    assert main(["train", "--data", str(tmp_path), "--config", str(f), "--out", str(tmp_path / "run")]) == 2
    assert "exp.yaml" in capsys.readouterr().err and not (tmp_path / "run").exists()  # nothing trained


def test_print_config_shows_what_would_train_and_reads_back(tmp_path, capsys, monkeypatch):
    """--print-config needs no data and trains nothing; what it prints, given back, is the same config."""
    from pneumolens.cli import main

    monkeypatch.chdir(tmp_path)  # where a run would go by default (runs/<preset>)
    monkeypatch.delenv("PNEUMOLENS_DATA", raising=False)
    f = tmp_path / "exp.yaml"
    f.write_text("preset: lung_gamma\naugment: {hflip: 0.5}\n")
    assert main(["train", "--config", str(f), "--epochs", "3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.json").write_text(printed)
    cfg = _config_of("--config", str(f), "--epochs", "3")
    assert TrainConfig.from_dict(json.loads(printed)) == cfg == _config_of("--config", str(tmp_path / "printed.json"))
    assert (cfg.preset, cfg.epochs, cfg.augment.hflip) == ("lung_gamma", 3, 0.5) and not (tmp_path / "runs").exists()


def test_resume_takes_no_config_file(tmp_path, capsys):
    from pneumolens.cli import main

    assert main(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.json")]) == 2
    assert "--resume continues the run's own recipe; drop --config" in capsys.readouterr().err
