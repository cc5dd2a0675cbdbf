"""Patient-grouped, stratified train/validation split and folds, stratified subsets for smoke runs,
and leaving listed files out of training."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import Sample, duplicate_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    duplicates: list[list[str]]  # byte-identical file groups found in the pool (paths)
    excluded: list[str] = field(default_factory=list)  # training files left out by a list (paths)


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


def patient_folds(samples: list[Sample], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds of sample indices, stratified by label, no patient in two folds (patients that
    share a byte-identical file count as one), for out-of-fold predictions."""
    groups = _groups(samples, duplicate_groups(samples))
    if k < 2 or len(np.unique(groups)) < k:
        raise ValueError(f"need k >= 2 and at least k patients, got k={k} and {len(np.unique(groups))} patient(s)")
    labels = np.array([s.label for s in samples])
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _, held in folds.split(np.zeros(len(samples)), labels, groups)]


def read_exclusions(path: str | os.PathLike[str]) -> list[str]:
    """The entries of an exclusion list: one file name or path per line; blank lines and lines
    starting with ``#`` are skipped, and a CSV's ``path`` column is read when its header has one."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the exclusion list ({e})") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines and "," in lines[0]:
        rows = csv.DictReader(lines)
        if "path" not in (rows.fieldnames or []):
            raise ValueError(
                f"{path}: a CSV exclusion list needs a 'path' column, got {', '.join(rows.fieldnames or [])}"
            )
        lines = [row["path"].strip() for row in rows]
    return lines


def exclude_from_training(split: Split, entries: list[str], source: str = "the exclusion list") -> Split:
    """``split`` with the listed files left out of its training part (their paths in ``excluded``).

    An entry with a folder in it matches a file by its resolved path, a bare name by its file name
    (which must then be unique in the pool). Validation is never changed, so runs with and without
    the list stay comparable on the same images: listed validation files are kept (and logged).

    Raises:
        ValueError: an entry matches no file of the pool, a bare name matches several, or the list
            leaves a class without training images.
    """
    pool = split.train + split.val
    by_name: dict[str, list[Sample]] = {}
    by_path: dict[Path, Sample] = {}
    for s in pool:
        by_name.setdefault(Path(s.path).name, []).append(s)
        by_path[Path(s.path).resolve()] = s
    chosen: set[str] = set()
    unknown, ambiguous = [], []
    for e in entries:
        if Path(e).name != e:  # has a folder: a path
            hit = by_path.get(Path(e).resolve())
            if hit is None:
                unknown.append(e)
            else:
                chosen.add(hit.path)
        elif len(found := by_name.get(e, [])) == 1:
            chosen.add(found[0].path)
        else:
            (ambiguous if found else unknown).append(e)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} entr{'y matches' if len(unknown) == 1 else 'ies match'} no training image, "
            f"e.g. {unknown[0]!r}"
        )
    if ambiguous:
        raise ValueError(f"{source}: the file name {ambiguous[0]!r} names several images; give its path instead")
    in_val = [s.path for s in split.val if s.path in chosen]
    if in_val:
        log.warning("%s: %d listed file(s) are in validation and stay there, e.g. %s", source, len(in_val), in_val[0])
    train = [s for s in split.train if s.path not in chosen]
    for label in sorted({s.label for s in split.train} - {s.label for s in train}):
        raise ValueError(f"{source}: leaves no {CLASS_NAMES[label]} image to train on")
    return replace(split, train=train, excluded=[s.path for s in split.train if s.path in chosen])
