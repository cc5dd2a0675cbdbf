"""Out-of-fold scoring by patient (training/crossval.py) and the recipe comparison built on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CHEST, ROOT, load_benchmark
from pneumolens import inference
from pneumolens.config import resolve_config
from pneumolens.data.sources import find_split, read_manifest, write_manifest
from pneumolens.data.split import patient_folds
from pneumolens.training.crossval import fold_config, out_of_fold, paired_auc_difference


def _recipe_cv():
    return load_benchmark("recipe_cv")


def test_manifest_round_trip(tmp_path):
    samples = find_split(CHEST, "train")[::700]
    write_manifest(tmp_path / "sub" / "m.csv", samples)
    back = read_manifest(tmp_path / "sub" / "m.csv")
    assert [(Path(s.path).resolve(), s.label, s.patient) for s in samples] == [
        (Path(s.path), s.label, s.patient) for s in back
    ]


def test_paired_auc_difference_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    groups = ["a", "a", "a", "b", "c", "c", "d", "d"]
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.7])
    d, ci = paired_auc_difference(y, p, p, groups, n_boot=200)
    assert d == 0 and ci == [0, 0]  # the same scores: no difference in any resample
    perfect = y.astype(float)
    # by hand: p ranks 15 of the 16 (normal, pneumonia) pairs right (0.4 > 0.35 is the one wrong), perfect all
    d, ci = paired_auc_difference(y, p, perfect, groups, n_boot=500)
    assert d == pytest.approx(1 - 15 / 16)
    assert ci[0] <= d <= ci[1] and ci[0] >= 0


def test_paired_auc_interval_narrows_with_more_patients():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 2, n)
        a, b = y + rng.normal(0, 1.0, n), y + rng.normal(0, 0.8, n)
        lo, hi = paired_auc_difference(y, a, b, [str(i // 2) for i in range(n)], n_boot=300)[1]
        return hi - lo

    assert width(2000) < width(100)


@pytest.fixture(scope="module")
def tiny_train(tiny_data):
    return find_split(tiny_data, "train")


def test_out_of_fold_scores_every_film_once_by_a_model_that_never_saw_its_patient(tiny_train, tmp_path, monkeypatch):
    cfg = resolve_config("seed", epochs=1, image_size=32, seed=3)
    assert fold_config(cfg) == cfg  # no weight average, nothing to warm up
    res = out_of_fold(tiny_train, cfg, tmp_path / "cv", k=2, seed=5)
    assert sorted(res.paths) == sorted(s.path for s in tiny_train) and not res.unreadable
    assert ((res.probs >= 0) & (res.probs <= 1)).all() and len(set(res.probs.tolist())) > 1
    assert res.labels.tolist() == [s.label for s in tiny_train]
    assert len(res.train_seconds) == 2 and all(t > 0 for t in res.train_seconds)
    folds = patient_folds(tiny_train, 2, 5)
    for i, run in enumerate(res.runs):
        assert sorted(np.flatnonzero(res.folds == i).tolist()) == sorted(folds[i].tolist())
        trained_on = {s.patient for s in read_manifest(run / "manifest.csv")}
        scored = {res.patients[j] for j in np.flatnonzero(res.folds == i)}
        assert trained_on and trained_on.isdisjoint(scored)
    # A finished fold is reused, not retrained, and its saved held-out scores too, unless damaged.
    stamp = (res.runs[0] / "model.safetensors").stat().st_mtime_ns
    calls = []
    real = inference.predict_samples

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(inference, "predict_samples", counted)
    again = out_of_fold(tiny_train, cfg, tmp_path / "cv", k=2, seed=5)
    assert (res.runs[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert np.array_equal(again.probs, res.probs) and not calls
    (res.runs[0] / "held_out.json").write_text("{not json")
    again = out_of_fold(tiny_train, cfg, tmp_path / "cv", k=2, seed=5)
    assert np.allclose(again.probs, res.probs) and len(calls) == 1
    # A run of another recipe in a fold's place is refused, naming it, whether finished or not.
    other = resolve_config("seed", epochs=1, image_size=32, seed=4)
    with pytest.raises(ValueError, match=r"fold0: holds a run of another recipe"):
        out_of_fold(tiny_train, other, tmp_path / "cv", k=2, seed=5)
    (res.runs[0] / "model.safetensors").unlink()  # unfinished: refused before it would resume or retrain
    with pytest.raises(ValueError, match=r"fold0: holds a run of another recipe"):
        out_of_fold(tiny_train, other, tmp_path / "cv", k=2, seed=5)


def test_fold_config_warms_the_average_up():
    cfg = resolve_config("default")
    assert cfg.ema_decay and not cfg.ema_warmup and fold_config(cfg).ema_warmup


def test_recipe_flags_are_read_by_the_train_parser_and_split_flags_refused():
    cv = _recipe_cv()
    name, flags, cfg = cv.parse_recipe("smooth=--label-smoothing 0.1 --model-kwargs '{\"drop_path\": 0.1}'", "default")
    assert (name, cfg.label_smoothing, cfg.model_kwargs["drop_path"]) == ("smooth", 0.1, 0.1)
    assert cv.parse_recipe("shipped=", "default")[2] == resolve_config("default")
    for spec, message in [
        ("nosep", "expected NAME=FLAGS"),
        ("a=--split-seed 3", "not a recipe flag"),
        ("a=--exclude=x.txt", "not a recipe flag"),
        ("a=--teacher runs/x --distill-weight 1", "not a recipe flag"),  # it saw the held-out folds
        ("a=--no-such-flag", "does not accept"),
        ("a=--lr 'x", "cannot split"),
    ]:
        with pytest.raises(SystemExit, match=message):
            cv.parse_recipe(spec, "default")


def test_specificity_at_sensitivity_by_hand():
    cv = _recipe_cv()
    y = np.array([1] * 100 + [0] * 4)
    p = np.concatenate([np.linspace(0.5, 1.0, 100), [0.1, 0.45, 0.52, 0.9]])
    # 97% sensitivity keeps the 97 highest positives: threshold = the 4th lowest positive score
    thr = np.sort(p[:100])[3]
    assert cv.specificity_at(y, p) == pytest.approx(np.mean(p[100:] < thr)) == 0.5


def test_group_specificity_uses_one_pooled_threshold():
    cv = _recipe_cv()
    y = np.array([1] * 100 + [0] * 6)
    p = np.concatenate([np.linspace(0.5, 1.0, 100), [0.1, 0.2, 0.9, 0.3, 0.95, 0.99]])
    paths = [f"f{i}" for i in range(106)]
    group_of = {path: "grey" if i in (102, 104, 105) else "dark" for i, path in enumerate(paths)}
    res = cv.OutOfFold(paths, y, p, np.zeros(106, int), paths, [], [], {})
    # the threshold (4th lowest positive, ~0.515) is set on all films; the grey normals score above it
    assert cv.group_specificity(res, group_of) == {"dark": [3, 1.0], "grey": [3, 0.0]}
    assert cv.specificity_at(y, p) == 0.5


def test_recipe_cv_refuses_an_unknown_group_key_before_training(tiny_data, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "recipe_cv.py"), "--data", str(tiny_data)]
    cmd += [
        "--out",
        str(tmp_path / "cv"),
        "--preset",
        "seed",
        "--recipe",
        "ref=--epochs 1",
        "--group-by",
        "PatientName",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--group-by PatientName: not a device or acquisition attribute" in run.stderr
    assert not (tmp_path / "cv").exists()  # nothing was trained


def test_recipe_cv_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "cv"
    small = "--epochs 1 --image-size 32"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "recipe_cv.py"),
        *("--data", str(tiny_data), "--out", str(out), "--preset", "seed", "--folds", "2"),
        *("--recipe", f"ref={small}", "--recipe", f"other={small} --seed 7", "--group-by", "lung-exposure"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    ref, other = summary["recipes"]
    assert (ref["recipe"], other["recipe"], ref["films"]) == ("ref", "other", other["films"])
    assert "auc_diff" not in ref and other["folds_better"] in (0, 1, 2)
    lo, hi = other["auc_diff_ci"]
    assert lo <= other["auc_diff"] <= hi
    assert other["auc_diff"] == pytest.approx(other["pooled_auc"] - ref["pooled_auc"])
    rows = (out / "oof.csv").read_text().splitlines()
    assert rows[0] == "path,label,patient,fold,p_ref,p_other" and len(rows) == ref["films"] + 1
    assert "| other | `--epochs 1 --image-size 32 --seed 7` |" in run.stdout
    assert sorted(p.name for p in (out / "other").iterdir()) == ["fold0", "fold1"]
    normals = sum(line.split(",")[1] == "NORMAL" for line in rows[1:])
    groups = other["group_spec_at_97_sens"]
    assert sum(n for n, _ in groups.values()) == normals and all(0 <= spec <= 1 for _, spec in groups.values())
    assert set(groups) <= {"lung median above 0.5", "lung median 0.5 or below", "no lungs found"}
    assert "| recipe | lung-exposure | normal films |" in run.stdout and "| other | lung median" in run.stdout
