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


def test_feature_distance_by_hand_and_on_real_films():
    """benchmarks/feature_distance.py: a class mean is at distance 0, a point along one axis of a
    known covariance at its Mahalanobis distance, and the features of real films give the shipped
    model's own probabilities."""
    import pneumolens
    from conftest import real_images
    from pneumolens.checkpoint import load_model

    fd = load_benchmark("feature_distance")
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, [1, 2], (4000, 2)), rng.normal([10, 0], [1, 2], (4000, 2))])
    labels = np.repeat([0, 1], 4000)
    d = fd.FeatureDistance(feats, labels)
    s = d.score(np.array([d.means[0], d.means[1], d.means[0] + [0, 4], [5.0, 0.0]]))
    assert s[:2] == pytest.approx([0, 0], abs=1e-9)
    assert s[2] == pytest.approx(2.0, rel=0.05)  # 4 along an axis of standard deviation 2
    assert s[3] == pytest.approx(5.0, rel=0.05)  # half-way: 5 standard deviations from either mean
    paths = real_images("test", "NORMAL", 2) + real_images("test", "PNEUMONIA", 2)
    f, p = fd.features(load_model(None), paths)
    assert f.shape == (4, 256)
    assert p == pytest.approx([r.probability for r in pneumolens.load().predict([str(q) for q in paths])], abs=1e-5)
    groups = fd.nlm_groups(SHARED / "lung_masks")
    assert [len(v) for v in groups.values()] == [541, 12, 11, 137]
