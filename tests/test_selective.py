"""The model's least sure calls: risk against coverage, the ``borderline`` band and its caution."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pneumolens
from conftest import load_benchmark, real_images
from pneumolens.checkpoint import load_model
from pneumolens.cli import main
from pneumolens.evaluation.selective import (
    band_for_risk,
    borderline_band,
    borderline_flags,
    borderline_metrics,
    distance,
    in_band,
    risk_coverage,
    validation_band,
)
from pneumolens.lungs.flags import BORDERLINE_FLAG, GREY_LUNGS_FLAG, check_flags, describe


def _p(logit: float) -> float:
    return float(1 / (1 + np.exp(-logit)))


def test_distance_band_and_risk_coverage_by_hand():
    t = 0.5  # logit 0: a film's distance is its logit's size
    p = [_p(z) for z in (-4.0, -1.0, -0.5, 0.2, 3.0, 5.0)]
    assert distance(p, t) == pytest.approx([4, 1, 0.5, 0.2, 3, 5])
    assert distance([_p(1.0)], _p(1.0)) == pytest.approx([0])
    band = borderline_band(p, t, share=0.2)  # the 20% quantile of the distances (numpy's linear): 0.5
    assert band["logit_distance"] == pytest.approx(0.5) and band["n"] == 6
    assert band["low"] == pytest.approx(_p(-0.5)) and band["high"] == pytest.approx(_p(0.5))
    assert [in_band(v, band) for v in p] == [False, False, False, True, False, False]  # open at its ends
    assert not in_band(0.5, None)
    with pytest.raises(ValueError, match="share"):
        borderline_band(p, t, share=1.0)

    y = [0, 0, 1, 0, 1, 1]  # the calls at 0.5: 0, 0, 0, 1, 1, 1: two errors (films 3 and 4), nearest the threshold
    rows = risk_coverage(y, p, t, coverages=(1.0, 0.5))
    assert rows[0] == {
        "coverage": 1.0,
        "kept": 6,
        "accuracy": pytest.approx(4 / 6),
        "sensitivity": pytest.approx(2 / 3),
        "specificity": pytest.approx(2 / 3),
        "errors": 2,
        "deferred_errors": 0,
    }
    # the half farthest from 0.5: distances 5, 4, 3; all right, both errors left to a reader
    assert rows[1]["kept"] == 3 and rows[1]["accuracy"] == 1.0 and rows[1]["deferred_errors"] == 2
    apart = borderline_metrics(y, p, t, {"low": _p(-0.6), "high": _p(0.6)})
    assert apart["borderline"] == {"n": 2, "errors": 2, "accuracy": 0.0}
    assert apart["others"] == {"n": 4, "errors": 0, "accuracy": 1.0}
    assert borderline_metrics(y, p, t, None) is None


def test_band_for_a_risk_by_hand():
    t = 0.5
    p = [_p(z) for z in (-4.0, -1.0, -0.5, 0.2, 3.0, 5.0)]  # distances 4, 1, 0.5, 0.2, 3, 5
    y = [0, 0, 1, 0, 1, 1]  # wrong: the two nearest (0.2 and 0.5); all the others right
    band = band_for_risk(y, p, t, 0.01)  # both errors inside: between distances 0.5 and 1
    assert band["logit_distance"] == pytest.approx(0.75) and band["share"] == pytest.approx(2 / 6)
    assert band["error_rate_outside"] == 0 and band["risk"] == 0.01 and band["n"] == 6
    assert [in_band(v, band) for v in p] == [False, False, True, True, False, False]
    one = band_for_risk(y, p, t, 0.3)  # 2 of 6 wrong is too many, 1 of 5 is not: the nearest film alone
    assert one["logit_distance"] == pytest.approx(0.35) and one["error_rate_outside"] == pytest.approx(0.2)
    none = band_for_risk(y, p, t, 0.5)  # the calls are wrong 2 of 6 times: no band needed
    assert none["share"] == 0 and not any(in_band(v, none) for v in p)
    # with 95% confidence, 0 errors in 4 films bound the rate at 1 - 0.05 ** (1 / 4) = 52.7% at best
    with pytest.raises(ValueError, match=r"at most 1.0% .* 6 films with 95% confidence \(the lowest they allow: 52.7%"):
        band_for_risk(y, p, t, 0.01, confidence=0.95)
    # two films equally far on either side cannot be parted: both go inside, or neither
    tied = band_for_risk([1, 0, 1], [_p(-1.0), _p(1.0), _p(3.0)], t, 0.01)
    assert tied["logit_distance"] == pytest.approx(2.0) and tied["share"] == pytest.approx(2 / 3)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="risk must be in"):
            band_for_risk(y, p, t, bad)


def test_a_trained_models_band_falls_back_to_its_share_when_the_risk_cannot_be_met(caplog):
    t = 0.5
    p = [_p(z) for z in (-4.0, -1.0, -0.5, 0.2, 3.0, 5.0)]
    y = [0, 0, 1, 0, 1, 1]
    assert validation_band(y, p, t, 0.2, None) == borderline_band(p, t, 0.2)
    assert validation_band(y, p, t, 0.2, 0.01) == band_for_risk(y, p, t, 0.01)
    every_call_wrong = [1 - v for v in (0, 0, 0, 1, 1, 1)]  # no band leaves a right call outside
    with caplog.at_level("WARNING"):
        band = validation_band(every_call_wrong, p, t, 0.2, 0.01)
    assert band == {**borderline_band(p, t, 0.2), "risk_not_met": 0.01}
    assert "holds 20% of the validation films instead" in caplog.text
    # a bound at a confidence: met where these films allow it, both recorded as not met where not
    sure = validation_band(y, p, t, 0.2, 0.3, 0.6)
    assert sure == band_for_risk(y, p, t, 0.3, confidence=0.6)
    assert sure["share"] > band_for_risk(y, p, t, 0.3)["share"]  # the bound, not the point estimate, set it
    assert validation_band(y, p, t, 0.2, 0.01, 0.95) == {
        **borderline_band(p, t, 0.2),
        "risk_not_met": 0.01,
        "confidence_not_met": 0.95,
    }


def test_the_shipped_model_carries_a_band_set_on_its_validation_films_and_flags_by_it():
    """The band holds a tenth of the 746 validation films around the threshold; through the Python
    API a probability inside it, and only inside it, carries the caution, which is not a check flag."""
    model = pneumolens.load()
    band = model.loaded.borderline
    assert band["share"] == 0.1 and band["n"] == 746
    assert band["low"] < model.loaded.threshold < band["high"]
    paths = real_images("test", "NORMAL", 20) + real_images("test", "PNEUMONIA", 20)
    results = model.predict([str(p) for p in paths])
    inside = [band["low"] < r.probability < band["high"] for r in results]
    assert [BORDERLINE_FLAG in r.flags for r in results] == inside
    assert any(inside) and not all(inside)
    r = results[inside.index(True)]
    assert "least sure calls" in r.warning and "least sure" in describe([BORDERLINE_FLAG])
    assert check_flags([BORDERLINE_FLAG, GREY_LUNGS_FLAG, "mirrored"]) == ["mirrored"]


def test_training_evaluate_and_calibrate_set_and_report_the_band(trained_run, tiny_data, tmp_path, capsys):
    """``train`` stores a band on its validation films; ``evaluate`` reports the calls inside it
    against the rest, and risk against coverage; a model without a band gets no caution."""
    loaded = load_model(trained_run)
    band = loaded.borderline
    assert band is not None and band["low"] <= loaded.threshold <= band["high"]
    assert band["n"] == loaded.meta["metrics"]["val"]["n"]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(tiny_data), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    m = json.loads(out.read_text())
    rows = m["selective"]["risk_coverage"]
    assert [r["coverage"] for r in rows] == [1.0, 0.95, 0.9, 0.8]
    assert rows[0]["accuracy"] == pytest.approx(m["accuracy"]) and rows[0]["kept"] == m["n"] == 24
    apart = m["selective"]["borderline"]
    assert apart["borderline"]["n"] + apart["others"]["n"] == 24
    assert f"borderline ({apart['borderline']['n']})" in text and "farthest from the threshold" in text
    assert borderline_flags(band["high"] + 1e-6, loaded.borderline) == []
    assert borderline_flags(loaded.threshold, loaded.borderline) == [BORDERLINE_FLAG]
    loaded.meta.pop("borderline")  # a model file written before models recorded a band
    assert borderline_flags(loaded.threshold, loaded.borderline) == []


def test_the_band_benchmark_sets_a_band_on_a_models_validation_films(trained_run, tiny_data, tmp_path, capsys):
    """``benchmarks/selective.py``: a copy with a band for a risk (weights unchanged, the original left
    as it was), and its refusals before any film is read."""
    bench = load_benchmark("selective")
    copy = tmp_path / "banded.safetensors"
    before = load_model(trained_run)
    argv = ["selective.py", "--model", str(trained_run), "--data", str(tiny_data)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", [*argv, "--risk", "0.6", "--out", str(copy)])
        bench.main()
    out = capsys.readouterr().out
    banded = load_model(copy)
    assert banded.sha256 == before.sha256 and banded.borderline["risk"] == 0.6
    assert banded.borderline["n"] == before.meta["metrics"]["val"]["n"]
    assert load_model(trained_run).borderline == before.borderline  # --out leaves the model itself alone
    assert "| coverage |" in out and f"stored in {copy}" in out
    for extra, message in (
        (["--share", "1.5"], "--share must be between 0 and 1"),
        (["--confidence", "0.9"], "give both"),
    ):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
            mp.setattr("sys.argv", [*argv, *extra])
            bench.main()
        assert message in capsys.readouterr().err
