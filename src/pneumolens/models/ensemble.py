"""Several classifiers in one network: the mean of their logits (a deep ensemble, Lakshminarayanan
et al. 2017).

Members are built from their own architecture records (``{"name": ..., "kwargs": ...}``) and must
read the same input; their weights live under ``members.<i>.`` in one state dict, so one model file
holds them all. Each member keeps its ``feature_layer`` (Grad-CAM's default averages the members'
maps on them); :attr:`Ensemble.feature_layers` names those layers from the ensemble's root, so that
one of them can be asked for explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Ensemble(nn.Module):
    def __init__(self, members: list[dict[str, Any]]) -> None:
        from pneumolens.models import create_model  # the registry imports this module

        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        if any(m.get("name") == "ensemble" for m in members):
            raise ValueError("an ensemble's members cannot themselves be ensembles")
        self.members = nn.ModuleList(create_model(m["name"], **m.get("kwargs", {})) for m in members)
        own = [getattr(m, "feature_layer", None) for m in self.members]
        self.feature_layers = [f"members.{i}.{name}" for i, name in enumerate(own)] if all(own) else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
