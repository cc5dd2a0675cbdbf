"""`pneumolens card`: a model card from what a model file records, and evaluations of it."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pneumolens.checkpoint import load_model, shipped_model_path
from pneumolens.cli import main
from pneumolens.evaluation.model_card import model_card, read_evaluations


def _config_block(card: str) -> dict:
    return json.loads(re.search(r"## Config\n\n```json\n(.*?)\n```", card, re.S).group(1))


def test_the_shipped_models_card_carries_its_recorded_figures():
    loaded = load_model()
    record = json.loads(shipped_model_path().with_name("default_test_metrics.json").read_text())
    card = model_card(loaded)
    assert card.startswith("# Model card: pneumolens-default-soup3") and "not a medical device" in card
    assert loaded.sha256 in card and f"Threshold {loaded.threshold:.3f} (`sensitivity:0.97` on validation)" in card
    lo, hi = record["ci"]["specificity"]
    test_row = next(line for line in card.splitlines() if line.startswith("| test (recorded for these weights"))
    assert f"| {record['n']} | {100 * record['accuracy']:.1f}% " in test_row
    assert f"{100 * record['specificity']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" in test_row
    assert "the recorded test figures: at 5%, pneumonia calls right 30.3%" in card  # Bayes, as evaluate says
    assert "weight average of 3 fine-tunes (seeds 1, 2, 3)" in card and "children aged one to five" in card
    assert _config_block(card) == loaded.meta["config"]  # the recipe, as --config reads it


def test_a_trained_models_card_with_its_evaluations(trained_run, tiny_data, tmp_path, capsys):
    """A model of one's own: its validation row and counts, an evaluate --json of it as a row, no
    shipped figures; the card written with --out; files of another model or not evaluations refused."""
    ev = tmp_path / "tiny.json"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--json", str(ev)]) == 0
    capsys.readouterr()
    out = tmp_path / "cards" / "CARD.md"
    assert main(["card", "--model", str(trained_run), "--metrics", str(ev), "--out", str(out)]) == 0
    card, m = out.read_text(), json.loads(ev.read_text())
    loaded = load_model(trained_run)
    assert "recorded for these weights" not in card and "Trained from scratch" in card
    counts = loaded.meta["training"]["counts"]
    assert f"Training films: NORMAL {counts['train']['NORMAL']}, PNEUMONIA {counts['train']['PNEUMONIA']}" in card
    row = next(line for line in card.splitlines() if line.startswith("| `tiny.json`"))
    assert f"| {m['n']} | {100 * m['accuracy']:.1f}% [{100 * m['ci']['accuracy'][0]:.1f}," in row
    assert _config_block(card) == json.loads((trained_run / "config.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**m, "model": "someone-else"}))
    assert main(["card", "--model", str(trained_run), "--metrics", str(other)]) == 2
    assert (
        "other.json: an evaluation of 'someone-else', not of this model ('pneumolens-seed')" in capsys.readouterr().err
    )
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match=r"notes\.json: not an evaluate --json file"):
        read_evaluations([tmp_path / "notes.json"], loaded)
    with pytest.raises(ValueError, match=r"gone\.json: not a readable evaluate --json file"):
        read_evaluations([tmp_path / "gone.json"], loaded)


def test_a_model_that_does_not_separate_the_classes_is_said_so(trained_run):
    loaded = load_model(trained_run)
    metrics = {**loaded.meta["metrics"], "val": {**loaded.meta["metrics"]["val"], "roc_auc": 0.61}}
    card = model_card(dataclasses.replace(loaded, meta={**loaded.meta, "metrics": metrics}))
    assert "**Warning**: validation ROC-AUC 0.610: this model does not separate the classes." in card
    assert "**Warning**" not in model_card(load_model())
