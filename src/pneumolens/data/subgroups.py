"""Subgroups of films within a class: where a model can be right on average and wrong on a part.

A film's subgroup is ``CLASS/group``. The group comes from a CSV manifest's ``group`` column (a
scanner, a site, an age band: whatever the user wants to see separately), else from the Kaggle file
names: normal films of the ``IM-*`` and the ``NORMAL2-IM-*`` series (two acquisition series with
different error rates), bacterial and viral pneumonia (``personN_bacteria_M``, ``personN_virus_M``);
a name that says nothing is ``unnamed``.
"""

from __future__ import annotations

from pathlib import PurePath

from pneumolens.config import CLASS_NAMES

# The Kaggle subgroups, in a fixed order (group DRO keeps one weight per entry).
KAGGLE_SUBGROUPS = (
    "NORMAL/IM",
    "NORMAL/NORMAL2",
    "NORMAL/unnamed",
    "PNEUMONIA/bacteria",
    "PNEUMONIA/virus",
    "PNEUMONIA/unnamed",
)


def kaggle_subgroup(path: str, label: int) -> str:
    """``CLASS/group`` of a film from its Kaggle file name."""
    name = PurePath(path).name.lower()
    if label:
        group = "bacteria" if "_bacteria_" in name else "virus" if "_virus_" in name else "unnamed"
    else:
        group = "NORMAL2" if name.startswith("normal2-im-") else "IM" if name.startswith("im-") else "unnamed"
    return f"{CLASS_NAMES[label]}/{group}"


def subgroup(path: str, label: int, group: str = "") -> str:
    """``CLASS/group``: the given group (a manifest's column) if any, else the Kaggle name's."""
    return f"{CLASS_NAMES[label]}/{group}" if group else kaggle_subgroup(path, label)
