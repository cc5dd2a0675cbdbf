"""``evaluate --csv``: one row per film scored, for reviewing errors or comparing models elsewhere.

Columns: ``path``, ``label`` and ``call`` (NORMAL or PNEUMONIA), ``probability``, ``outcome`` (TP, TN,
FP or FN at the operating point), ``subgroup`` (the table's ``CLASS/group``), ``flags`` (space
separated, the caution included) and ``copy_of``: for a file byte-identical to one listed before it,
that file's path (a test split can hold the same film twice under two names; the Kaggle one holds six
such pairs), else empty. No patient identifier is written: the path is the file's own.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from pneumolens.config import CLASS_NAMES
from pneumolens.data.sources import duplicate_groups
from pneumolens.data.subgroups import subgroup
from pneumolens.evaluation.evaluate import Evaluation

COLUMNS = ("path", "label", "call", "probability", "outcome", "subgroup", "flags", "copy_of")


def film_rows(ev: Evaluation) -> list[dict[str, Any]]:
    threshold = ev.metrics["threshold"]
    first_of = {s.path: group[0].path for group in duplicate_groups(ev.samples) for s in group[1:]}
    rows = []
    for s, p in zip(ev.samples, ev.probabilities, strict=True):
        called = int(p >= threshold)
        outcome = ("TN", "FP", "FN", "TP")[2 * s.label + called]
        rows.append(
            {
                "path": s.path,
                "label": CLASS_NAMES[s.label],
                "call": CLASS_NAMES[called],
                "probability": f"{p:.6f}",
                "outcome": outcome,
                "subgroup": subgroup(s.path, s.label, s.group),
                "flags": " ".join(ev.flags.get(s.path, [])),
                "copy_of": first_of.get(s.path, ""),
            }
        )
    return rows


def write_films_csv(ev: Evaluation, path: str | os.PathLike[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(film_rows(ev))
