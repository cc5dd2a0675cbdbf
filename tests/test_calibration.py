"""Operating point, temperature scaling and bootstrap intervals on small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumolens.evaluation.calibration import (
    bootstrap_ci,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    lower_bound,
)
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.models import create_model

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("fixed:0.3", 0.3),
        ("sensitivity:1.0", 0.35),  # the highest threshold that still catches both positives
        ("sensitivity:0.5", 0.8),
        ("specificity:1.0", 0.8),  # the lowest threshold that calls no negative positive
        ("specificity:0.5", 0.35),
        ("youden", 0.8),  # J = 0.5 at 0.8 and at 0.35; the stricter comes first
    ],
)
def test_choose_threshold(policy, expected):
    t = choose_threshold(Y, P, policy)
    assert t == pytest.approx(expected)
    name, _, value = policy.partition(":")
    m = binary_metrics(Y, P, t)
    if name == "sensitivity":
        assert m["sensitivity"] >= float(value)
    if name == "specificity":
        assert m["specificity"] >= float(value)


@pytest.mark.parametrize("policy", ["sens:0.9", "fixed", "sensitivity:1.5", "magic"])
def test_bad_policy(policy):
    with pytest.raises(ValueError, match="valid: fixed:T, sensitivity:S, specificity:S, youden"):
        choose_threshold(Y, P, policy)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at T = 1
    overconfident = 3.0 * z
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(y, 1 / (1 + np.exp(-overconfident)))
    after = expected_calibration_error(y, 1 / (1 + np.exp(-overconfident / t)))
    assert after < before / 2


def test_ece_hand_case():
    assert expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)  # 90% sure, 50% right
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == pytest.approx(0.0)


def test_bootstrap_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(1)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)

    y, p = sample(200)
    ci = bootstrap_ci(y, p, 0.5, n_boot=300)
    point = binary_metrics(y, p, 0.5)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi, k
    y2, p2 = sample(2000)
    ci2 = bootstrap_ci(y2, p2, 0.5, n_boot=300)
    assert ci2["accuracy"][1] - ci2["accuracy"][0] < (ci["accuracy"][1] - ci["accuracy"][0]) / 2


def test_patient_bootstrap_counts_a_patient_once():
    # every film copied four times under one patient: resampling films treats the copies as
    # independent evidence and narrows the interval by about half; resampling patients does not
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 150), 0, 1)
    y4, p4, who = np.repeat(y, 4), np.repeat(p, 4), np.repeat([f"patient{i}" for i in range(150)], 4)

    def width(ci):
        return ci["accuracy"][1] - ci["accuracy"][0]

    films = width(bootstrap_ci(y, p, 0.5, n_boot=400))
    copies = width(bootstrap_ci(y4, p4, 0.5, n_boot=400))
    patients = width(bootstrap_ci(y4, p4, 0.5, n_boot=400, groups=who))
    assert copies < 0.65 * films
    assert patients == pytest.approx(films, rel=0.2)
    # one film per patient: the same as resampling films, draw for draw
    assert bootstrap_ci(y, p, 0.5, n_boot=50, groups=[f"p{i:03d}" for i in range(150)]) == bootstrap_ci(
        y, p, 0.5, n_boot=50
    )
    with pytest.raises(ValueError, match="3 keys for 150 images"):
        bootstrap_ci(y, p, 0.5, groups=["a", "b", "c"])


def test_clopper_pearson_lower_bound_by_hand():
    # all n right: the bound solves p**n = 1 - confidence
    assert lower_bound(np.array([99]), 99, 0.95)[0] == pytest.approx(0.05 ** (1 / 99))
    assert lower_bound(np.array([0]), 10, 0.95)[0] == 0.0
    assert lower_bound(np.array([97]), 100, 0.95)[0] < 0.97  # 97 of 100 does not show 97%


@pytest.mark.parametrize("name", ["sensitivity", "specificity"])
def test_threshold_with_confidence_keeps_a_margin(name):
    # 99 positives and 99 negatives, interleaved: each negative just below its positive. Of 99 films,
    # 97% is shown with 95% confidence only if all 99 are right (0.05 ** (1/99) = 0.9702), and
    # 98 films cannot show it at all.
    pos = 0.5 + 0.005 * np.arange(99)
    y, p = np.r_[np.ones(99, int), np.zeros(99, int)], np.r_[pos, pos - 0.0025]
    plain = choose_threshold(y, p, f"{name}:0.97")
    sure = choose_threshold(y, p, f"{name}:0.97", confidence=0.95)
    if name == "sensitivity":
        assert (plain, sure) == (pos[2], pos[0])  # 97 of 99 positives caught, against all 99
    else:
        assert (plain, sure) == (pos[96], pos[98])  # 97 of 99 negatives below, against all 99
    counted = 1 if name == "sensitivity" else 0
    drop = np.flatnonzero(y == counted)[50]
    with pytest.raises(ValueError, match="98 .* cannot show .* needs at least 99"):
        choose_threshold(np.delete(y, drop), np.delete(p, drop), f"{name}:0.97", confidence=0.95)
    with pytest.raises(ValueError, match="strictly between"):
        choose_threshold(y, p, f"{name}:0.97", confidence=1.0)
    with pytest.raises(ValueError, match="not 'youden'"):
        choose_threshold(y, p, "youden", confidence=0.95)


def test_fold_temperature_divides_the_logit():
    torch.manual_seed(0)
    for name, c in (("seed_cnn", 3), ("resnet_small", 1)):
        m = create_model(name, in_channels=c, image_size=64).eval()
        x = torch.rand(4, c, 64, 64)
        with torch.no_grad():
            before = m(x)
            fold_temperature(m, 2.5)
            assert torch.allclose(m(x), before / 2.5, atol=1e-6)
