"""The shipped model's recipe (``training.recipe``): its commands, and the whole recipe run on real films."""

from __future__ import annotations

import dataclasses

from pneumolens.checkpoint import load_model
from pneumolens.cli import build_parser, main, train_config
from pneumolens.config import PRESETS, TrainConfig, resolve_config
from pneumolens.training.recipe import DRAW_SEEDS, FINETUNE_SEEDS, shipped_recipe


def _config(step) -> TrainConfig:
    return train_config(build_parser().parse_args(list(step.argv)))


def test_the_recipe_is_two_draws_a_teacher_three_distilled_fine_tunes_and_their_weight_average(tmp_path):
    steps = shipped_recipe("DATA", tmp_path)
    assert [s.name for s in steps] == ["draw17", "draw22", "teacher", "finetune1", "finetune2", "finetune3", "soup"]
    assert [s.trains for s in steps] == [True, True, False, True, True, True, False]
    draws, teacher, tunes, soup = steps[:2], steps[2], steps[3:6], steps[6]
    for step, seed in zip(draws, DRAW_SEEDS, strict=True):  # plain --preset default draws
        assert _config(step) == dataclasses.replace(PRESETS["default"], seed=seed)
    members = (str(draws[0].out), str(draws[1].out))
    assert teacher.argv == ("ensemble", *members, "--data", "DATA", "--out", str(teacher.out))
    for step, seed in zip(tunes, FINETUNE_SEEDS, strict=True):  # from the first draw, learning the teacher
        expected = resolve_config(
            "default", epochs=8, lr=5e-4, warmup_epochs=0, distill_weight=1.0, seed=seed,
            init=str(draws[0].out), teacher=str(teacher.out),
        )  # fmt: skip
        assert _config(step) == expected
    assert soup.argv[:5] == ("ensemble", *map(str, (t.out for t in tunes)), "--data")
    assert "--average-weights" in soup.argv and soup.out == tmp_path / "soup"
    # smoke flags reach every training run and win over the recipe's own
    small = shipped_recipe("DATA", tmp_path, ["--epochs", "1", "--image-size", "32"])
    for step in small:
        if step.trains:
            assert (_config(step).epochs, _config(step).preprocess.image_size) == (1, 32), step.name
        else:
            assert "--epochs" not in step.argv


def test_the_whole_recipe_runs_and_its_soup_records_where_it_came_from(tiny_data, tmp_path):
    steps = shipped_recipe(tiny_data, tmp_path, ["--epochs", "1", "--image-size", "32"])
    for step in steps:
        assert main(list(step.argv)) == 0, step.name
    runs = {s.name: load_model(s.out) for s in steps}
    # the teacher averages the two draws' logits; each fine-tune started from the first draw and learnt it
    assert [m["sha256"] for m in runs["teacher"].meta["members"]] == [runs["draw17"].sha256, runs["draw22"].sha256]
    for seed in FINETUNE_SEEDS:
        tune = runs[f"finetune{seed}"]
        assert tune.meta["training"]["init_sha256"] == runs["draw17"].sha256
        assert TrainConfig.from_dict(tune.meta["config"]).teacher == str(tmp_path / "teacher")
    soup = runs["soup"]
    assert soup.meta["architecture"] == runs["draw17"].meta["architecture"]  # one network
    listed = soup.meta["averaged_weights_of"]
    assert [m["seed"] for m in listed] == list(FINETUNE_SEEDS)
    assert [m["sha256"] for m in listed] == [runs[f"finetune{s}"].sha256 for s in FINETUNE_SEEDS]
    assert 0 < soup.threshold < 1 and soup.meta["metrics"]["val"]["n"] == runs["draw17"].meta["metrics"]["val"]["n"]
