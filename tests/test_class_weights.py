from __future__ import annotations

import pytest
import torch

from pneumolens.data.dataset import class_weights

LABELS = [0] * 1341 + [1] * 3875  # the Kaggle train split


def test_seed_formula_swaps_the_shares():
    w = class_weights(LABELS, "seed")
    # NORMAL is weighted by PNEUMONIA's share of the images and vice versa
    assert w.tolist() == pytest.approx([3875 / 5216, 1341 / 5216])
    assert w[0] > w[1]


def test_balanced_is_inverse_frequency():
    w = class_weights(LABELS, "balanced")
    assert w.tolist() == pytest.approx([5216 / (2 * 1341), 5216 / (2 * 3875)])
    # each class then carries the same total weight
    assert 1341 * w[0].item() == pytest.approx(3875 * w[1].item())


def test_none_and_errors():
    assert torch.equal(class_weights(LABELS, "none"), torch.ones(2))
    with pytest.raises(ValueError, match="valid: seed, balanced, none"):
        class_weights(LABELS, "magic")
    with pytest.raises(ValueError, match="both classes"):
        class_weights([1, 1, 1], "seed")
