"""Patient-grouped, stratified train/validation split, and stratified subsets for smoke runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from pneumolens.data.sources import Sample, duplicate_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    duplicates: list[list[str]]  # byte-identical file groups found in the pool (paths)


def _groups(samples: list[Sample], dups: list[list[Sample]]) -> np.ndarray:
    """Group key per sample: its patient, with patients that share a byte-identical file merged."""
    parent: dict[str, str] = {s.patient: s.patient for s in samples}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in dups:
        first = find(group[0].patient)
        for s in group[1:]:
            parent[find(s.patient)] = first
    roots = [find(s.patient) for s in samples]
    _, codes = np.unique(roots, return_inverse=True)
    return codes


def stratified_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """At most ``n`` samples with the class proportions of ``samples``."""
    if n >= len(samples):
        return list(samples)
    labels = [s.label for s in samples]
    subset, _ = train_test_split(samples, train_size=n, stratify=labels, random_state=seed)
    return sorted(subset, key=lambda s: s.path)


def patient_split(samples: list[Sample], val_fraction: float, seed: int) -> Split:
    """Carve a validation set out of ``samples`` so that no patient is in both parts.

    Patients are grouped (a patient's images stay together; byte-identical files join their
    groups) and the folds are stratified by label.
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    dups = duplicate_groups(samples)
    if dups:
        n_extra = sum(len(g) - 1 for g in dups)
        log.info("found %d byte-identical duplicate group(s) (%d extra file(s))", len(dups), n_extra)
    groups = _groups(samples, dups)
    labels = np.array([s.label for s in samples])
    n_splits = max(2, round(1.0 / val_fraction))
    if len(np.unique(groups)) < n_splits:
        raise ValueError(f"need at least {n_splits} patients to carve a validation split, got {len(np.unique(groups))}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(np.zeros(len(samples)), labels, groups))
    return Split(
        train=[samples[i] for i in train_idx],
        val=[samples[i] for i in val_idx],
        duplicates=[[s.path for s in g] for g in dups],
    )
