"""``pneumolens compare``: paired differences between two models, by patient, and McNemar on the calls."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumolens.cli import main
from pneumolens.evaluation.compare import compare_scores


def test_hand_computed_case():
    """Four films of four patients: A gets films 0 and 2 right at 0.5, B all four. B minus A: accuracy
    +0.5, sensitivity +0.5, specificity +0.5, ROC-AUC 1 - 0.75; only B right on two films, and the
    exact McNemar p of 2 discordant films all one way is 0.5."""
    y = np.array([1, 1, 0, 0])
    a, b = np.array([0.9, 0.2, 0.1, 0.8]), np.array([0.9, 0.9, 0.1, 0.1])
    c = compare_scores(y, a, b, (0.5, 0.5), ["p1", "p2", "p3", "p4"], n_boot=200)
    d = {k: v["value"] for k, v in c["difference"].items()}
    assert d == pytest.approx({"accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5, "roc_auc": 0.25})
    assert c["calls"] == {"only_a_right": 0, "only_b_right": 2, "mcnemar_p": pytest.approx(0.5)}
    assert c["a"]["confusion_matrix"] == [[1, 1], [1, 1]] and c["b"]["confusion_matrix"] == [[2, 0], [0, 2]]
    # each model at its own operating point: A at 0.85 calls only film 0 pneumonia
    c = compare_scores(y, a, b, (0.85, 0.5), ["p1", "p2", "p3", "p4"], n_boot=200)
    assert c["a"]["confusion_matrix"] == [[2, 0], [1, 1]] and c["difference"]["specificity"]["value"] == 0
    with pytest.raises(ValueError, match="needs both classes"):  # rather than resampling for ever
        compare_scores(y[:2], a[:2], b[:2], (0.5, 0.5), ["p1", "p2"])


def test_intervals_are_paired_hold_the_point_and_narrow_with_patients():
    rng = np.random.default_rng(0)
    widths = []
    for n in (60, 600):
        y = rng.integers(0, 2, n)
        a = np.clip(y * 0.3 + rng.normal(0.35, 0.2, n), 0, 1)  # a weaker ranking
        b = np.clip(y * 0.5 + rng.normal(0.25, 0.2, n), 0, 1)
        patients = [f"p{i // 2}" for i in range(n)]  # two films each
        c = compare_scores(y, a, b, (0.5, 0.5), patients, n_boot=400)
        for d in c["difference"].values():
            assert d["ci"][0] <= d["value"] <= d["ci"][1]
        widths.append(np.diff(c["difference"]["roc_auc"]["ci"])[0])
        assert c["n_patients"] == n // 2
        same = compare_scores(y, a, a, (0.5, 0.5), patients, n_boot=100)  # a model against itself
        assert all(d == {"value": 0.0, "ci": [0.0, 0.0]} for d in same["difference"].values())
        assert same["calls"] == {"only_a_right": 0, "only_b_right": 0, "mcnemar_p": 1.0}
    assert c["difference"]["roc_auc"]["ci"][0] > 0  # 600 films: B's better ranking is told apart
    assert widths[1] < widths[0] / 2


def test_compare_two_models_on_real_films(trained_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["compare", str(trained_run), "--data", str(tiny_data), "--json", str(out), "--n-boot", "200"]) == 0
    table = capsys.readouterr().out
    c = json.loads(out.read_text())
    assert c["n"] == 24 and c["b"]["path"].startswith(str(trained_run))  # B alone: A is the shipped model
    assert c["a"]["model"] == "pneumolens-default-soup3" and "| ROC-AUC |" in table
    assert (
        main(["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--json", str(tmp_path / "e.json")])
        == 0
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert c["b"]["confusion_matrix"] == evaluated["confusion_matrix"]  # the same figures evaluate gives
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert c["b"][key] == pytest.approx(evaluated[key])
        assert c["difference"][key]["value"] == pytest.approx(c["b"][key] - c["a"][key])


@pytest.mark.parametrize(
    "args, message",
    [
        (["a", "b", "c"], "one or two models"),
        (["--threshold-a", "1.5", "x"], "--threshold-a 1.5: an operating point lies between 0 and 1"),
        (["--n-boot", "10", "x"], "--n-boot 10: at least 100"),
        (["no_such_model.safetensors"], "no_such_model.safetensors: no model file found"),
    ],
)
def test_bad_flags_are_named(tiny_data, capsys, args, message):
    assert main(["compare", *args, "--data", str(tiny_data)]) == 2
    assert message in capsys.readouterr().err


def test_one_class_only_is_refused(trained_run, tiny_data, tmp_path, capsys):
    normal = sorted((tiny_data / "test" / "NORMAL").iterdir())
    (tmp_path / "normal.csv").write_text("path,label\n" + "".join(f"{f},NORMAL\n" for f in normal))
    assert main(["compare", str(trained_run), "--data", str(tmp_path / "normal.csv")]) == 2
    assert "hold one class only" in capsys.readouterr().err
