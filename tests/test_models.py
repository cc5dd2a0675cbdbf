from __future__ import annotations

import pytest
import torch

from pneumolens.config import AugmentConfig
from pneumolens.data.augment import random_affine
from pneumolens.models import create_model, model_names


@pytest.mark.parametrize(
    "name, channels, size", [("seed_cnn", 3, 64), ("resnet_small", 1, 128), ("resnet_small", 1, 96)]
)
def test_models_map_batch_to_logits(name, channels, size):
    m = create_model(name, in_channels=channels, image_size=size).eval()
    x = torch.rand(2, channels, size, size)
    assert m(x).shape == (2,)
    assert m.forward_head(m.forward_features(x)).shape == (2,)
    assert dict(m.named_modules())[m.feature_layer] is not None


def test_seed_cnn_has_the_keras_parameter_count():
    # Keras model.summary() of the seed's network at 64x64x3: 896 + 18,496 + 73,856 + 147,584 (convs)
    # + 262,272 + 16,512 + 66,048 + 513 (dense) = 586,177 parameters.
    m = create_model("seed_cnn", in_channels=3, image_size=64)
    assert sum(p.numel() for p in m.parameters()) == 586_177


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid: " + ", ".join(model_names())):
        create_model("vgg99")


def test_augment_identity_when_ranges_are_zero():
    x = torch.rand(4, 1, 32, 32)
    y = random_affine(x, AugmentConfig(rotation=0, shift=0, zoom=0))
    assert torch.equal(x, y)


def test_augment_moves_content_and_stays_in_range():
    x = torch.zeros(8, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    g = torch.Generator().manual_seed(0)
    y = random_affine(x, AugmentConfig(rotation=10, shift=0.2, zoom=0.1), generator=g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    centres = [(yy[0] > 0.5).nonzero().float().mean(0) for yy in y]
    assert len({tuple(c.round().tolist()) for c in centres}) > 1  # each image got its own transform
    shift_only = random_affine(x, AugmentConfig(rotation=0, shift=0.2, zoom=0), generator=g)
    assert (shift_only.sum((1, 2, 3)) - x.sum((1, 2, 3))).abs().max() < 1.0  # a shift keeps the square
