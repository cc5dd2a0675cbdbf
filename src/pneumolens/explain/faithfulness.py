"""Deletion and insertion curves (Petsiuk et al., RISE, 2018): is an explanation faithful?

Deletion removes the most important pixels first (replacing them with a blurred copy) and tracks the
explained class's probability: a faithful map makes it fall fast (low area). Insertion starts from
the blurred image and restores the most important pixels first: a faithful map makes it rise fast
(high area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumolens.explain.attribution import blurred


@dataclass(frozen=True)
class Curves:
    fractions: np.ndarray  # share of pixels removed / inserted, 0..1
    deletion: np.ndarray  # explained-class probability along deletion
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return float(np.trapezoid(self.deletion, self.fractions))

    @property
    def insertion_auc(self) -> float:
        return float(np.trapezoid(self.insertion, self.fractions))


@torch.inference_mode()
def deletion_insertion(
    model: nn.Module, x: torch.Tensor, attribution: np.ndarray, target_sign: float = 1.0, steps: int = 20
) -> Curves:
    """Both curves for one input ``x`` (1, C, S, S) and its map ``attribution`` (S, S)."""
    if attribution.shape != tuple(x.shape[-2:]):
        raise ValueError(f"attribution {attribution.shape} does not match the input {tuple(x.shape[-2:])}")
    base = blurred(x)
    order = torch.from_numpy(np.argsort(-attribution.ravel(), kind="stable").copy())  # most important first
    n = order.numel()
    fractions = np.linspace(0.0, 1.0, steps + 1)
    # (steps+1, S*S) masks: True where the pixel is among the top-k
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    counts = torch.from_numpy(np.round(fractions * n).astype(np.int64))
    top = (rank[None, :] < counts[:, None]).view(len(fractions), 1, *x.shape[-2:])  # (K, 1, S, S)
    deleted = torch.where(top, base, x)  # (K, C, S, S)
    inserted = torch.where(top, x, base)
    prob = lambda batch: torch.sigmoid(target_sign * model(batch)).cpu().numpy()  # noqa: E731
    return Curves(fractions, prob(deleted), prob(inserted))
