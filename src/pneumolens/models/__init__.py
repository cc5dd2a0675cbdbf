"""Architectures and a small registry: ``create_model(name, in_channels=..., **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pneumolens.models.ensemble import Ensemble
from pneumolens.models.lung_unet import LungUNet
from pneumolens.models.resnet_small import ResNetSmall
from pneumolens.models.seed_cnn import SeedCNN

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "seed_cnn": SeedCNN,
    "resnet_small": ResNetSmall,
    "lung_unet": LungUNet,
    "ensemble": Ensemble,  # members=[{"name": ..., "kwargs": ...}, ...]: their mean logit
}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build an architecture by name. Classifiers map (B, C, H, W) in [0, 1] to (B,) logits; the
    lung segmenter maps (B, 1, H, W) to (B, 1, H, W) logits."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:  # an unknown or ill-typed architecture argument, e.g. from --model-kwargs
        raise ValueError(f"model {name!r}: {e}") from None
