"""Group DRO (Sagawa et al. 2020): minimise the loss of the worst-served group of films, not the mean.

The groups are the Kaggle subgroups of ``pneumolens.data.subgroups``: normal films of the ``IM-*``
and of the ``NORMAL2-IM-*`` series (two acquisition series: the shipped model is right on 100% of
the first and 87.5% of the second on validation), bacterial and viral pneumonia; a film whose name
says nothing joins its class's ``unnamed`` group.

Each group g carries a weight q_g (uniform over the groups the training part holds, at the start).
Every step, q_g is multiplied by exp(eta * mean loss of g in the batch) and renormalised, then the
loss is sum_g q_g * mean loss of g: the weights drift towards the groups the network keeps failing,
at a speed set by ``eta``. Groups replace the class weights (two normal and two pneumonia groups
start at equal weight, as the balanced class weights do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pneumolens.data.subgroups import KAGGLE_SUBGROUPS, kaggle_subgroup

GROUPS = KAGGLE_SUBGROUPS


def group_of(path: str, label: int) -> int:
    """The index in ``GROUPS`` of a film, from its label and file name."""
    return GROUPS.index(kaggle_subgroup(path, label))


def initial_weights(paths: Sequence[str], labels: Sequence[int]) -> torch.Tensor:
    """Uniform over the groups that hold at least one training film, 0 for the others."""
    present = torch.zeros(len(GROUPS))
    for p, y in zip(paths, labels, strict=True):
        present[group_of(p, int(y))] = 1.0
    if not present.any():
        raise ValueError("group DRO needs at least one training film")
    return present / present.sum()


def group_sums(losses: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums and counts of per-film losses (``len(GROUPS)`` each; absent groups 0)."""
    sums = torch.zeros(len(GROUPS), dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
    counts = torch.zeros(len(GROUPS), dtype=losses.dtype, device=losses.device).index_add(
        0, groups, torch.ones_like(losses)
    )
    return sums, counts


def _means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each group's mean loss; 0 for a group with no film in the batch."""
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def updated_weights(q: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step: q_g * exp(eta * mean loss of g), renormalised. Groups absent from
    the batch keep their factor 1 (their mean loss counts as 0), as in the paper's code."""
    q = q * torch.exp(eta * _means(sums, counts).detach())
    return q / q.sum()


def robust_loss(q: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sum_g q_g * mean loss of g over the groups in the batch."""
    means = _means(sums, counts)
    return (q.to(means.dtype) * means).sum()
