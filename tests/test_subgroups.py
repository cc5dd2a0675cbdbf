"""Subgroups: the Kaggle names' series and kinds, a manifest's own groups, and their metrics by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_a_manifest_age_column_in_years_or_as_dicom_ages(tmp_path):
    """``age``: years or a DICOM age string, read back as years; an empty cell is no age; a malformed
    one is refused with the manifest's file, row and value."""
    from pneumolens.data.sources import DataLayoutError

    rows = ["path,label,age", "a.png,NORMAL,3", "b.png,NORMAL,045Y", "c.png,PNEUMONIA,018M", "d.png,PNEUMONIA,"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    back = read_manifest(tmp_path / "m.csv")
    assert [s.age for s in back] == [3.0, 45.0, 1.5, None]
    write_manifest(tmp_path / "again.csv", back)
    assert [s.age for s in read_manifest(tmp_path / "again.csv")] == [3.0, 45.0, 1.5, None]
    for bad in ("forty", "-2", "200", "45 years"):
        (tmp_path / "bad.csv").write_text(f"path,label,age\na.png,NORMAL,{bad}\n")
        with pytest.raises(DataLayoutError, match=f"bad.csv:2: age '{bad.upper()}'"):
            read_manifest(tmp_path / "bad.csv")


def test_manifest_ages_give_the_age_bands_and_the_age_caution(tmp_path, trained_run):
    """Films without a DICOM header (the Kaggle JPEGs) get their age band and ``older_than_training``
    from the manifest's ``age``: in ``evaluate --group-by age-band`` and its per-film CSV."""
    import csv
    import json

    from pneumolens.cli import main

    normal, sick = real_images("test", "NORMAL", 2), real_images("test", "PNEUMONIA", 2)
    rows = [
        (normal[0], "NORMAL", "3"),
        (normal[1], "NORMAL", "30"),
        (sick[0], "PNEUMONIA", "070Y"),
        (sick[1], "PNEUMONIA", ""),
    ]
    lines = ["path,label,age"] + [f"{p},{label},{age}" for p, label, age in rows]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out, films = tmp_path / "m.json", tmp_path / "films.csv"
    args = ["evaluate", "--data", str(tmp_path / "m.csv"), "--model", str(trained_run), "--group-by", "age-band"]
    assert main([*args, "--json", str(out), "--csv", str(films)]) == 0
    assert {k: g["n"] for k, g in json.loads(out.read_text())["subgroups"].items()} == {
        "NORMAL/1-5 years": 1, "NORMAL/18-64 years": 1, "PNEUMONIA/65 years or more": 1, "PNEUMONIA/not DICOM": 1,
    }  # fmt: skip
    flagged = {Path(r["path"]).name: "older_than_training" in r["flags"] for r in csv.DictReader(films.open())}
    assert flagged == {normal[0].name: False, normal[1].name: True, sick[0].name: True, sick[1].name: False}


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


def test_evaluate_groups_dicom_films_by_a_device_attribute_and_never_by_a_patient(tmp_path, capsys):
    import json

    import numpy as np
    import pydicom
    from PIL import Image

    from conftest import PATIENT_ID, PATIENT_NAME, make_dicom
    from pneumolens.cli import main

    vendors = {"NORMAL": ["VendorA", "VendorA", "VendorB"], "PNEUMONIA": ["VendorA", "VendorA", None]}
    for label, names in vendors.items():
        (tmp_path / label).mkdir()
        for i, (vendor, src) in enumerate(zip(names, real_images("test", label, 3), strict=True)):
            path = make_dicom(tmp_path / label / f"film{i}.dcm", np.asarray(Image.open(src).convert("L")))
            if vendor:
                ds = pydicom.dcmread(path)
                ds.Manufacturer = vendor
                ds.save_as(path)
    (tmp_path / "NORMAL" / "film9.jpeg").symlink_to(real_images("test", "NORMAL", 4)[-1])  # not a DICOM file
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(tmp_path), "--group-by", "Manufacturer", "--json", str(out)]) == 0
    text = out.read_text()
    sub = json.loads(text)["subgroups"]
    assert {k: g["n"] for k, g in sub.items()} == {
        "NORMAL/VendorA": 2, "NORMAL/VendorB": 1, "NORMAL/not DICOM": 1,
        "PNEUMONIA/VendorA": 2, "PNEUMONIA/no Manufacturer": 1,
    }  # fmt: skip
    printed = capsys.readouterr()
    for secret in (PATIENT_NAME, PATIENT_ID):
        assert secret not in text and secret not in printed.out and secret not in printed.err
    # a patient attribute is refused by name, before any film is scored
    assert main(["evaluate", "--data", str(tmp_path), "--group-by", "PatientName"]) == 2
    err = capsys.readouterr().err
    assert "--group-by PatientName" in err and "Manufacturer" in err


def test_evaluate_groups_dicom_films_by_the_patient_s_age_band(tmp_path, capsys):
    """``--group-by age-band``: each band from the header's age or birth and study dates; the age and
    the patient's identifiers never in the output."""
    import json

    import numpy as np
    import pydicom
    from PIL import Image

    from conftest import PATIENT_ID, PATIENT_NAME, make_dicom
    from pneumolens.cli import main

    ages = {
        "NORMAL": [{"PatientAge": "003Y"}, {"PatientAge": "010M"}, {"PatientAge": "072M"}],
        "PNEUMONIA": [{"PatientBirthDate": "19600101", "StudyDate": "20260101"}, {"PatientAge": "040Y"}, {}],
    }
    for label, headers in ages.items():
        (tmp_path / label).mkdir()
        for i, (header, src) in enumerate(zip(headers, real_images("test", label, 3), strict=True)):
            path = make_dicom(tmp_path / label / f"film{i}.dcm", np.asarray(Image.open(src).convert("L")))
            ds = pydicom.dcmread(path)
            for keyword, value in header.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
    (tmp_path / "NORMAL" / "film9.jpeg").symlink_to(real_images("test", "NORMAL", 4)[-1])
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(tmp_path), "--group-by", "age-band", "--json", str(out)]) == 0
    text = out.read_text()
    assert {k: g["n"] for k, g in json.loads(text)["subgroups"].items()} == {
        "NORMAL/1-5 years": 1, "NORMAL/under 1 year": 1, "NORMAL/6-17 years": 1, "NORMAL/not DICOM": 1,
        "PNEUMONIA/65 years or more": 1, "PNEUMONIA/18-64 years": 1, "PNEUMONIA/no age": 1,
    }  # fmt: skip
    printed = capsys.readouterr()
    for secret in (PATIENT_NAME, PATIENT_ID, "040Y", "19600101"):
        assert secret not in text and secret not in printed.out and secret not in printed.err


def test_evaluate_groups_films_by_their_lung_exposure(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from pneumolens.cli import main
    from pneumolens.data.images import read_image
    from pneumolens.data.subgroups import GREY_LUNGS, grouped_by
    from pneumolens.lungs.preprocess import lung_median
    from pneumolens.lungs.segment import LungSegmenter

    films = real_images("test", "PNEUMONIA", 12) + real_images("test", "NORMAL", 6)
    seg = LungSegmenter.shipped()
    medians = [lung_median(g, seg.mask(g)) for g in map(read_image, films)]
    grey = [m > GREY_LUNGS for m in medians]
    assert any(grey) and not all(grey)  # both kinds among these real films
    samples = [Sample(str(p), int(p.parent.name == "PNEUMONIA"), p.stem) for p in films]
    groups = [s.group for s in grouped_by(samples, "lung-exposure")]
    assert groups == [f"lung median above {GREY_LUNGS}" if g else f"lung median {GREY_LUNGS} or below" for g in grey]
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(tmp_path / "black.png")  # no lungs in it
    (tmp_path / "broken.png").write_bytes(b"not an image")
    odd = [Sample(str(tmp_path / n), 0, n) for n in ("black.png", "broken.png")]
    assert [s.group for s in grouped_by(odd, "lung-exposure")] == ["no lungs found", "unreadable"]
    # through evaluate: the subgroups' counts follow the groups
    for s in samples:
        (tmp_path / "data" / ("PNEUMONIA" if s.label else "NORMAL")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / ("PNEUMONIA" if s.label else "NORMAL") / Path(s.path).name).symlink_to(s.path)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--group-by", "lung-exposure", "--json", str(out)]) == 0
    sub = json.loads(out.read_text())["subgroups"]
    expected: dict[str, int] = {}
    for s, g in zip(samples, groups, strict=True):
        key = f"{'PNEUMONIA' if s.label else 'NORMAL'}/{g}"
        expected[key] = expected.get(key, 0) + 1
    assert {k: v["n"] for k, v in sub.items()} == expected
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--group-by", "Exposure"]) == 2
    assert "lung-exposure" in capsys.readouterr().err  # the refusal lists it among the valid choices


def test_caution_metrics_by_hand():
    from pneumolens.evaluation.evaluate import caution_metrics

    # cautioned: normal 0.7 (false positive), 0.2; pneumonia 0.9, 0.6 -> 3 calls, 2 right
    # the others: normal 0.1; pneumonia 0.8, 0.3 (a miss) -> 1 call, right
    y = [0, 0, 1, 1, 0, 1, 1]
    p = [0.7, 0.2, 0.9, 0.6, 0.1, 0.8, 0.3]
    cautioned = [True, True, True, True, False, False, False]
    m = caution_metrics(cautioned, y, p, 0.5, [f"p{i}" for i in range(7)], n_boot=200)
    grey, other = m["grey_lungs"], m["without grey_lungs"]
    assert (grey["n"], grey["n_normal"], grey["pneumonia_calls"]) == (4, 2, 3)
    assert grey["precision"] == pytest.approx(2 / 3) and grey["specificity"] == pytest.approx(1 / 2)
    assert grey["precision_ci"][0] <= 2 / 3 <= grey["precision_ci"][1]
    assert (other["n"], other["pneumonia_calls"], other["precision"], other["specificity"]) == (3, 1, 1.0, 1.0)
    assert list(caution_metrics([False] * 7, y, p, 0.5, ["a"] * 7)) == ["without grey_lungs"]  # no empty entry


def test_evaluate_reports_the_caution_and_the_checks_as_predict_flags_them(tmp_path, capsys):
    from PIL import Image

    from pneumolens.checkpoint import load_model
    from pneumolens.cli import main
    from pneumolens.data.images import read_image
    from pneumolens.evaluation.evaluate import CHECKED, UNCHECKED, evaluate
    from pneumolens.lungs.flags import plausibility_flags
    from pneumolens.lungs.segment import LungSegmenter

    films = real_images("test", "PNEUMONIA", 16) + real_images("test", "NORMAL", 8)
    for f in films:
        (tmp_path / f.parent.name).mkdir(exist_ok=True)
        (tmp_path / f.parent.name / f.name).symlink_to(f)
    gray = read_image(films[-1])  # and a noisy copy of a normal film, for the check rows
    noisy = np.clip(gray + np.random.default_rng(0).normal(0, 0.05, gray.shape), 0, 1)
    Image.fromarray(np.round(255 * noisy).astype(np.uint8)).save(tmp_path / "NORMAL" / "noisy-copy.png")
    ev = evaluate(load_model(None), tmp_path, n_boot=100)  # the shipped model
    seg = LungSegmenter.shipped()
    grey = {
        s.path: "grey_lungs" in plausibility_flags(seg.mask(read_image(s.path), full_size=False), read_image(s.path))
        for s in ev.samples
    }
    assert any(grey.values()) and not all(grey.values())  # both kinds among these real films
    t = ev.metrics["threshold"]
    for name, want in (("grey_lungs", True), ("without grey_lungs", False)):
        calls = [
            (s.label, q) for s, q in zip(ev.samples, ev.probabilities, strict=True) if grey[s.path] == want and q >= t
        ]
        got = ev.metrics["caution"][name]
        assert got["n"] == sum(g == want for g in grey.values()) and got["pneumonia_calls"] == len(calls)
        assert got["precision"] == pytest.approx(sum(label for label, _ in calls) / len(calls))
    checks = ev.metrics["checks"]  # the noisy copy is counted and scored apart
    assert checks["counts"].get("noisy") == 1 and checks[CHECKED]["n"] >= 1
    assert checks[CHECKED]["n"] + checks[UNCHECKED]["n"] == ev.metrics["n"] == 25
    assert main(["evaluate", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"grey_lungs ({ev.metrics['caution']['grey_lungs']['n']})" in out
    assert "noisy 1" in out and f"{CHECKED} ({checks[CHECKED]['n']})" in out
    # the copy's name gives no patient: it counts as its own, and the table says so; the Kaggle names do
    assert ev.metrics["films_of_unknown_patient"] == 1 and "[1 film(s) of unknown patient" in out


def test_check_metrics_by_hand():
    from pneumolens.evaluation.evaluate import CHECKED, UNCHECKED, check_metrics

    # with a check flag: normal 0.7 (wrong), pneumonia 0.9 (right), normal 0.2 (right) -> 2 of 3
    # without: normal 0.1, pneumonia 0.8 (right), pneumonia 0.3 (a miss) -> 2 of 3; grey_lungs is no check
    y = [0, 1, 0, 0, 1, 1]
    p = [0.7, 0.9, 0.2, 0.1, 0.8, 0.3]
    flags = [["noisy"], ["lungs_cut_off", "noisy"], ["mirrored", "grey_lungs"], ["grey_lungs"], [], []]
    m = check_metrics(flags, y, p, 0.5, [f"p{i}" for i in range(6)], n_boot=200)
    assert m["counts"] == {"noisy": 2, "lungs_cut_off": 1, "mirrored": 1}  # the most frequent first
    assert list(m["counts"]) == ["noisy", "lungs_cut_off", "mirrored"]
    checked, other = m[CHECKED], m[UNCHECKED]
    assert (checked["n"], checked["n_normal"], checked["accuracy"]) == (3, 2, pytest.approx(2 / 3))
    assert (checked["sensitivity"], checked["specificity"]) == (1.0, 0.5)
    assert checked["accuracy_ci"][0] <= 2 / 3 <= checked["accuracy_ci"][1]
    assert (other["n"], other["accuracy"], other["sensitivity"], other["specificity"]) == (
        3,
        pytest.approx(2 / 3),
        0.5,
        1.0,
    )
    none = check_metrics([[], ["grey_lungs"]], [0, 1], [0.1, 0.9], 0.5, ["a", "b"], n_boot=50)
    assert none["counts"] == {} and CHECKED not in none and none[UNCHECKED]["accuracy"] == 1.0
