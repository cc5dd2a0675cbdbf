from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from pneumolens.evaluation.metrics import binary_metrics, net_benefit, resample_metrics


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.8)])
def test_against_scikit_learn(seed, threshold):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.random(300) * 0.65, 0, 1)
    m = binary_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["false_positive_rate"] == pytest.approx(1 - m["specificity"])
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(y, pred))


def test_the_resampling_metrics_are_scikit_learns():
    """The bootstrap's numpy metrics give ``binary_metrics``' (scikit-learn's) numbers on resamples
    like the bootstrap's: repeated films, scores rounded so that many tie, and degenerate draws."""
    rng = np.random.default_rng(7)
    y0 = rng.integers(0, 2, 120)
    p0 = np.round(np.clip(0.3 * y0 + rng.random(120) * 0.7, 0, 1), 2)  # two decimals: many ties
    draws = [rng.integers(0, 120, 120) for _ in range(200)]
    draws += [np.flatnonzero(y0 == 1), np.flatnonzero(y0 == 0)[:5], np.array([3])]  # one class, one film
    for i, threshold in zip(draws, np.resize([0.5, 0.3, 0.8, 0.0, 1.0], len(draws)), strict=True):
        fast, reference = resample_metrics(y0[i], p0[i], threshold), binary_metrics(y0[i], p0[i], threshold)
        for key, value in fast.items():
            assert value == pytest.approx(reference[key], abs=1e-12) if value is not None else reference[key] is None


def test_hand_computed_case():
    # tn=1 (0.1), fp=1 (0.6), fn=1 (0.4), tp=2 (0.7, 0.9)
    m = binary_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.7, 0.9], 0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (pos, neg) pairs ranked right
    assert m["threshold"] == 0.5 and m["n"] == 5


def test_undefined_ratios_are_none():
    m = binary_metrics([1, 1], [0.9, 0.2])
    assert m["specificity"] is None and m["roc_auc"] is None
    with pytest.raises(ValueError, match="no samples"):
        binary_metrics([], [])


def test_net_benefit_by_hand():
    """Five films, two with pneumonia. At pt 0.5 the model calls 0.9, 0.6 (both pneumonia) and 0.55 (normal):
    2/5 - 1/5 * 1 = 0.2; at pt 0.2 it also calls 0.3 (normal): 2/5 - 2/5 * 0.25 = 0.3. Calling every film:
    2/5 - 3/5 * odds."""
    y, p = [1, 1, 0, 0, 0], [0.9, 0.6, 0.55, 0.3, 0.1]
    assert net_benefit(y, p, [0.5, 0.2]) == pytest.approx([0.2, 0.3])
    assert net_benefit(y, [1.0] * 5, [0.5, 0.2]) == pytest.approx([0.4 - 0.6, 0.4 - 0.6 * 0.25])
    assert net_benefit(y, [0.0] * 5, [0.5]) == pytest.approx([0.0])  # calling none
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(y, p, [1.0])
    with pytest.raises(ValueError, match="alike in shape"):
        net_benefit(y, p[:4], [0.5])
