"""The normal-series adversary: gradient reversal, its ramp, its targets, and a training run with it."""

from __future__ import annotations

import math

import pytest
import torch

from pneumolens.config import resolve_config
from pneumolens.training.adversary import reversal_coefficient, reverse_gradient, series_targets
from pneumolens.training.module import Classifier, known_bce, weighted_bce


def test_reversal_is_the_identity_forward_and_negates_the_gradient_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    out = reverse_gradient(x, 0.25)
    assert torch.equal(out, x.detach())
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_reversal_ramp_by_hand():
    assert reversal_coefficient(0.0) == 0.0
    assert math.isclose(reversal_coefficient(0.5), 2 / (1 + math.exp(-5)) - 1)
    assert math.isclose(reversal_coefficient(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert reversal_coefficient(7.0) == reversal_coefficient(1.0) and reversal_coefficient(-1.0) == 0.0
    assert reversal_coefficient(0.1) < reversal_coefficient(0.3) < reversal_coefficient(0.9)


def test_series_targets_only_for_named_normal_films():
    paths = ["t/NORMAL/IM-0115-0001.jpeg", "t/NORMAL/NORMAL2-IM-1427-0001.jpeg", "t/NORMAL/scan.png",
             "t/PNEUMONIA/person1_bacteria_1.jpeg", "t/PNEUMONIA/NORMAL2-IM-0001.jpeg"]  # fmt: skip
    assert series_targets(paths, [0, 0, 0, 1, 1]).tolist() == [0.0, 1.0, -1.0, -1.0, -1.0]


def test_the_adversary_pushes_the_features_against_its_head():
    """The loss adds weight x the head's cross-entropy on the normal films, and the backbone's gradient
    from that term is the reverse of what plain training of the same term would give it."""
    torch.manual_seed(0)
    cfg = resolve_config("default", series_adversary=0.5, subtype_weight=0.0, image_size=32)
    module = Classifier(cfg.to_dict(), [1.0, 1.0]).eval()
    x = torch.randn(4, 1, 32, 32)
    y, w = torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.ones(4)
    paths = ["a/IM-0001-0001.jpeg", "a/NORMAL2-IM-0002-0001.jpeg", "a/person1_virus_1.jpeg", "a/other.png"]
    loss, logits, aux = module._loss(x, y, w, paths)
    pooled = module.model.forward_features(x).float().mean((2, 3))
    by_hand = known_bce(module.series_head(pooled).squeeze(1), torch.tensor([0.0, 1.0, -1.0, -1.0]))
    assert math.isclose(aux["series"].item(), by_hand.item(), rel_tol=1e-5)
    assert math.isclose(loss.item(), (weighted_bce(logits, y, w) + 0.5 * by_hand).item(), rel_tol=1e-5)
    stem = next(module.model.parameters())
    (g_adv,) = torch.autograd.grad(aux["series"], stem, retain_graph=True)
    (g_plain,) = torch.autograd.grad(by_hand, stem, retain_graph=True)
    assert g_plain.abs().sum() > 0
    assert torch.allclose(g_adv, -reversal_coefficient(1.0) * g_plain, rtol=1e-4, atol=1e-7)
    (g_head,) = torch.autograd.grad(aux["series"], module.series_head.weight)  # the head itself learns as usual
    (g_head_plain,) = torch.autograd.grad(by_hand, module.series_head.weight)
    assert torch.allclose(g_head, g_head_plain, rtol=1e-4, atol=1e-7)


def test_series_adversary_settings_are_checked():
    with pytest.raises(ValueError, match="series_adversary must be >= 0"):
        resolve_config("default", series_adversary=-0.1)
    with pytest.raises(ValueError, match="series_adversary needs each film's series"):
        resolve_config("default", series_adversary=0.5, subtype_weight=0.0, mixup=0.2)


def test_training_with_the_adversary_ships_the_plain_model(tiny_data, tmp_path):
    from conftest import train_cli
    from pneumolens.checkpoint import load_model
    from pneumolens.training.fit import read_history

    assert (
        train_cli(tiny_data, tmp_path / "run", "--series-adversary", "0.5", "--lungs", "none", preset="crop_clahe") == 0
    )
    history = read_history(tmp_path / "run" / "logs")
    assert history and math.isfinite(history[0]["train_series_loss"]) and history[0]["train_series_loss"] > 0
    loaded = load_model(tmp_path / "run")
    assert loaded.meta["config"]["series_adversary"] == 0.5
    assert not any("series" in k for k in loaded.model.state_dict())
