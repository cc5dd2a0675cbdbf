"""A domain-adversarial head (DANN, Ganin et al. 2016) against the two Kaggle normal series.

The Kaggle normal films come in two acquisition series, ``IM-*`` and ``NORMAL2-IM-*``; the shipped
model is right on nearly all of the first and fewer of the second (``evaluate``'s subgroups). A
small head on the pooled features learns to tell a normal film's series, and a gradient-reversal
layer hands the features the negative of its gradient: they are pushed to carry no series
information, so "looks like the IM series" cannot serve as evidence of a normal film. Only normal
films with a series in their name count; pneumonia films and unnamed ones are ignored.

The reversal's strength ramps as in the paper, 2 / (1 + exp(-10 p)) - 1 over training progress p
in [0, 1], so the head learns before the features are pushed against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pneumolens.data.subgroups import kaggle_subgroup

SERIES = {"NORMAL/IM": 0.0, "NORMAL/NORMAL2": 1.0}


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


def reverse_gradient(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    """The identity going forward; the gradient times ``-coefficient`` going back."""
    return _Reverse.apply(x, coefficient)


def reversal_coefficient(progress: float) -> float:
    """DANN's ramp: 0 at the start of training, 0.987 at the end (``progress`` clipped to [0, 1])."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(1.0, max(0.0, progress)))) - 1.0


def series_targets(paths: Sequence[str], labels: Sequence[int]) -> torch.Tensor:
    """1 for a ``NORMAL2`` normal film, 0 for an ``IM`` one, -1 (ignored) for every other film."""
    return torch.tensor([SERIES.get(kaggle_subgroup(p, int(y)), -1.0) for p, y in zip(paths, labels, strict=True)])
