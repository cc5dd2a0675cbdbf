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
)
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.models import create_model
from pneumolens.training.fit import fold_temperature

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


def test_fold_temperature_divides_the_logit():
    torch.manual_seed(0)
    for name, c in (("seed_cnn", 3), ("resnet_small", 1)):
        m = create_model(name, in_channels=c, image_size=64).eval()
        x = torch.rand(4, c, 64, 64)
        with torch.no_grad():
            before = m(x)
            fold_temperature(m, 2.5)
            assert torch.allclose(m(x), before / 2.5, atol=1e-6)
