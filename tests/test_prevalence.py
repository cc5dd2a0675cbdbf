"""Predictive values at another prevalence: Bayes by hand, the films' own prevalence, the intervals,
refusals, and `evaluate --prevalence` on real films."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumolens.cli import main
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.prevalence import at_prevalences, predictive_values


@pytest.mark.parametrize(
    ("se", "sp", "q", "ppv", "npv"),
    [
        (0.9, 0.8, 0.1, 0.09 / 0.27, 0.72 / 0.73),  # 0.09 true and 0.18 false pneumonia calls per film
        (0.9, 0.8, 0.5, 0.45 / 0.55, 0.40 / 0.45),
        (1.0, 1.0, 0.2, 1.0, 1.0),
        (0.0, 1.0, 0.3, None, 0.7),  # never calls pneumonia: no PPV
    ],
)
def test_predictive_values_by_hand(se, sp, q, ppv, npv):
    got = predictive_values(se, sp, q)
    assert got == (pytest.approx(ppv) if ppv is not None else None, pytest.approx(npv))


def _films(n_patients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients).repeat(2)  # two films per patient, one label
    p = 0.3 * y + 0.7 * rng.random(y.size)  # errors of both kinds at 0.5
    return y, p, [f"p{i // 2}" for i in range(y.size)]


def test_at_the_films_own_prevalence_they_are_the_measured_ppv_and_npv():
    y, p, patients = _films(200)
    m = binary_metrics(y, p, 0.5)
    (r,) = at_prevalences(y, p, 0.5, [float(np.mean(y))], patients)
    assert r["ppv"] == pytest.approx(m["precision"]) and r["npv"] == pytest.approx(m["negative_predictive_value"])


def test_intervals_hold_the_estimate_and_narrow_with_more_patients():
    small = at_prevalences(*_films(60)[:2], 0.5, [0.05, 0.3], _films(60)[2])
    large = at_prevalences(*_films(2000)[:2], 0.5, [0.05, 0.3], _films(2000)[2])
    for rows in (small, large):
        for r in rows:
            for k in ("ppv", "npv"):
                lo, hi = r["ci"][k]
                assert lo <= r[k] <= hi
    assert large[0]["ci"]["ppv"][1] - large[0]["ci"]["ppv"][0] < small[0]["ci"]["ppv"][1] - small[0]["ci"]["ppv"][0]
    assert (
        small[0]["ppv"] < small[1]["ppv"] and small[0]["npv"] > small[1]["npv"]
    )  # rarer: calls of pneumonia worth less


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_a_prevalence_outside_zero_and_one_is_refused(q):
    y, p, patients = _films(20)
    with pytest.raises(ValueError, match=f"prevalence {q}: a share of films with pneumonia lies between 0 and 1"):
        at_prevalences(y, p, 0.5, [q], patients)


def test_films_of_one_class_are_refused():
    with pytest.raises(ValueError, match="films of both classes"):
        at_prevalences([1, 1, 1], [0.9, 0.2, 0.7], 0.5, [0.1], ["a", "b", "c"])


def test_evaluate_gives_them_on_real_films(trained_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(
        ["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--prevalence", "0.1", "0.4"]
        + ["--json", str(out)]
    )
    assert rc == 0
    m = json.loads(out.read_text())
    assert [r["prevalence"] for r in m["at_prevalence"]] == [0.1, 0.4]
    se, sp = m["sensitivity"], m["specificity"]
    for r in m["at_prevalence"]:
        assert (r["ppv"], r["npv"]) == pytest.approx(predictive_values(se, sp, r["prevalence"]))
    table = capsys.readouterr().out
    assert "where 10% have pneumonia" in table and "where 40% have pneumonia" in table
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--prevalence", "1"])
    assert (
        exit_.value.code == 2 and "--prevalence: must be a fraction between 0 and 1, got 1" in capsys.readouterr().err
    )
