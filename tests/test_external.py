"""benchmarks/external.py: the counts and ROC-AUC of its table by hand, and its films on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, load_benchmark


def test_rates_and_row_by_hand():
    ext = load_benchmark("external")
    tb = np.array([0, 0, 0, 1, 1])
    prob = np.array([0.1, 0.5, 0.2, 0.4, 0.9])
    r = ext.rates(tb, prob >= 0.45, prob, np.array([False, True, False, False, False]))
    # normal films: one of three called; TB films: one of two; AUC: 5 of 6 (TB, normal) pairs ranked right
    assert r == {"normal": 3, "normal_called": 1, "tb": 2, "tb_called": 1, "flagged": 1, "auc": pytest.approx(5 / 6)}
    assert ext.row("x", r) == "| x | 1 of 3 (33.3%) | 1 of 2 (50.0%) | 0.833 | 1 of 5 (20.0%) |"
    # with the interval (the age bands' few films): Wilson's for 1 of 3, [6.1%, 79.2%]
    assert ext.row("x", r, interval=True).startswith("| x | 1 of 3 (33.3% [6.1, 79.2]) | 1 of 2 (50.0%) |")
    assert [ext.band(a) for a in ("0.5", "1", "5", "6", "17", "18", "64", "65", "89", "")] == [
        "under 1 year", "1-5 years", "1-5 years", "6-17 years", "6-17 years", "18-64 years", "18-64 years",
        "65 years or more", "65 years or more", "no age",
    ]  # fmt: skip
    only_normal = ext.rates(tb[:3], prob[:3] >= 0.45, prob[:3], np.zeros(3, bool))
    assert only_normal["auc"] != only_normal["auc"] and ext.row("y", only_normal).endswith("| - | - | 0 of 3 (0.0%) |")


def test_films_reads_the_nlm_manifest():
    rows = load_benchmark("external").films(SHARED / "lung_masks")
    assert len(rows) == 701 and {r["tb_label"] for r in rows} == {"0", "1"}
    assert {r["source"] for r in rows} == {"montgomery", "shenzhen"}
    assert all(Path(r["path"]).is_file() for r in rows[::50])
    assert sum(r["tb_label"] == "0" for r in rows) == 357  # the external normals of every quality round
    bands = [load_benchmark("external").band(r["age"]) for r in rows]
    assert bands.count("no age") == 137 and bands.count("1-5 years") == 12  # Montgomery's rows have no age
