"""Subgroups: the Kaggle names' series and kinds, a manifest's own groups, and their metrics by hand."""

from __future__ import annotations

import pytest

from conftest import real_images
from pneumolens.data.sources import Sample, read_manifest, write_manifest
from pneumolens.data.subgroups import kaggle_subgroup, subgroup
from pneumolens.evaluation.evaluate import subgroup_metrics


def test_the_subgroups_of_real_kaggle_names():
    normals = {kaggle_subgroup(str(p), 0) for p in real_images("test", "NORMAL", 40)}
    assert normals == {"NORMAL/IM", "NORMAL/NORMAL2"}
    for p in real_images("test", "PNEUMONIA", 40):
        assert kaggle_subgroup(str(p), 1) == ("PNEUMONIA/virus" if "_virus_" in p.name else "PNEUMONIA/bacteria")
    assert kaggle_subgroup("x/scan_0001.dcm", 0) == "NORMAL/unnamed"
    assert subgroup("x/NORMAL2-IM-0001-0001.jpeg", 0, "scanner B") == "NORMAL/scanner B"  # the manifest wins


def test_a_manifest_group_column_survives_the_round_trip(tmp_path):
    samples = [Sample(str(tmp_path / "a.png"), 0, "p1", "site A"), Sample(str(tmp_path / "b.png"), 1, "p2", "")]
    write_manifest(tmp_path / "m.csv", samples)
    back = read_manifest(tmp_path / "m.csv")
    assert [(s.label, s.patient, s.group) for s in back] == [(0, "p1", "site A"), (1, "p2", "")]
    write_manifest(tmp_path / "plain.csv", [Sample(str(tmp_path / "c.png"), 1, "p3")])
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == "path,label,patient"  # no empty column


def test_subgroup_metrics_by_hand():
    # normals: series A scores 0.1, 0.2, 0.7 (one false positive at 0.5); series B 0.6, 0.9 (both wrong)
    # pneumonia: one kind, 0.8, 0.95, 0.4 (one miss)
    y = [0, 0, 0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.7, 0.6, 0.9, 0.8, 0.95, 0.4]
    groups = ["NORMAL/A"] * 3 + ["NORMAL/B"] * 2 + ["PNEUMONIA/x"] * 3
    patients = ["a1", "a2", "a3", "b1", "b1", "x1", "x2", "x3"]  # series B: one patient, two films
    m = subgroup_metrics(y, p, 0.5, patients, groups, n_boot=200)
    assert list(m) == ["NORMAL/A", "NORMAL/B", "PNEUMONIA/x"]
    a, b, x = m["NORMAL/A"], m["NORMAL/B"], m["PNEUMONIA/x"]
    assert (a["n"], a["n_patients"], a["rate"], a["value"]) == (3, 3, "specificity", pytest.approx(2 / 3))
    assert (b["n"], b["n_patients"], b["value"]) == (2, 1, 0.0)
    assert b["ci"] == [0.0, 0.0]  # one patient: every resample is the same two films
    assert (x["rate"], x["value"]) == ("sensitivity", pytest.approx(2 / 3))
    assert a["ci"][0] <= a["value"] <= a["ci"][1]
    # ROC-AUC of series A against the three pneumonia films: pairs (normal < pneumonia) of 9
    # 0.1 and 0.2 are below all three; 0.7 is below 0.8 and 0.95, above 0.4 -> 8 of 9
    assert a["roc_auc_vs_other_class"] == pytest.approx(8 / 9)
    # pneumonia against all five normals: 0.8 beats 4 (not 0.9), 0.95 beats 5, 0.4 beats 2 -> 11 of 15
    assert x["roc_auc_vs_other_class"] == pytest.approx(11 / 15)
