"""benchmarks/draws.py: the spread of a recipe's retrains, from the runs' own metric files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import mannwhitneyu

from conftest import ROOT, SHARED, load_benchmark
from pneumolens.checkpoint import shipped_model_path
from pneumolens.inference import Predictor


def _draws():
    return load_benchmark("draws")


def _run(root: Path, name: str, val_auc: float, acc: float, auc: float, external: float | None) -> Path:
    run = root / name
    run.mkdir()
    (run / "val_metrics.json").write_text(json.dumps({"roc_auc": val_auc, "accuracy": 0.9}))
    test = {"accuracy": acc, "sensitivity": 0.99, "specificity": 0.8, "roc_auc": auc}
    (run / "test_metrics.json").write_text(json.dumps(test))
    if external is not None:
        (run / "external.json").write_text(json.dumps({"rate": external}))
    return run


def test_summary_by_hand():
    mean, sd, lo, hi = _draws().summarise([0.90, 0.92, 0.94])
    assert (round(mean, 10), round(sd, 10), lo, hi) == (0.92, 0.02, 0.90, 0.94)
    assert _draws().summarise([0.5])[1] == 0.0


def test_table_two_groups(tmp_path):
    a = [_run(tmp_path, f"a{i}", v, acc, 0.98, e) for i, (v, acc, e) in
         enumerate([(0.987, 0.93, 0.05), (0.989, 0.94, 0.03), (0.985, 0.92, 0.10)])]  # fmt: skip
    b = [_run(tmp_path, f"b{i}", v, acc, 0.97, e) for i, (v, acc, e) in
         enumerate([(0.988, 0.92, 0.20), (0.986, 0.91, 0.15)])]  # fmt: skip
    d = _draws()
    out = d.table({"A": [d.figures(r) for r in a], "B": [d.figures(r) for r in b]})
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines()}
    assert "A, 3 draws" in out and "B, 2 draws" in out
    assert "93.0% (1.0; 92.0%-94.0%)" in rows["test accuracy"]  # mean, sd, range of 92, 93, 94
    assert "0.9870 (0.0020; 0.9850-0.9890)" in rows["validation ROC-AUC"]
    p = mannwhitneyu([5, 3, 10], [20, 15]).pvalue
    assert rows["external normals called pneumonia"].endswith(f"| {p:.3f} |")
    assert "6.0% (3.6; 3.0%-10.0%)" in rows["external normals called pneumonia"]


def test_figure_missing_from_a_group_is_left_out(tmp_path):
    d = _draws()
    a = d.figures(_run(tmp_path, "a", 0.98, 0.9, 0.97, None))
    b = d.figures(_run(tmp_path, "b", 0.99, 0.9, 0.97, 0.1))
    out = d.table({"A": [a], "B": [b]})
    assert "external" not in out and "test accuracy" in out


def test_not_a_run_names_the_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no val_metrics.json"):
        _draws().figures(tmp_path / "empty")


def test_command_line(tmp_path):
    a = [_run(tmp_path, f"a{i}", 0.98 + i / 1000, 0.9, 0.97, 0.1) for i in range(2)]
    b = [_run(tmp_path, f"b{i}", 0.97 + i / 1000, 0.9, 0.97, 0.1) for i in range(2)]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "draws.py"), "--group", "new", *map(str, a), "--group", "old"]
    done = subprocess.run([*cmd, *map(str, b)], capture_output=True, text=True, check=True)
    assert "| validation ROC-AUC | 0.9805 (0.0007; 0.9800-0.9810) | 0.9705" in done.stdout
    bad = subprocess.run([*cmd], capture_output=True, text=True)
    assert bad.returncode != 0 and "'old': no run directories" in bad.stderr


def test_external_rate_measured_once_on_real_films(tmp_path):
    source = SHARED / "lung_masks"
    # the shipped model calls the first two normal films and the TB film pneumonia, not the third
    ids = ["CHNCXR_0178_0", "CHNCXR_0228_0", "CHNCXR_0001_0", "CHNCXR_0378_1"]
    folder = tmp_path / "external"
    (folder / "images").mkdir(parents=True)
    for i in ids:
        (folder / "images" / f"{i}.png").symlink_to(source / "images" / f"{i}.png")
    (folder / "manifest.csv").write_text("id,tb_label\n" + "".join(f"{i},{i[-1]}\n" for i in ids))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(shipped_model_path(), run / "model.safetensors")
    d = _draws()
    d.external_rate(run, str(folder))
    saved = json.loads((run / "external.json").read_text())
    calls = [
        p.label
        for p in Predictor.from_checkpoint(run).predict_paths([str(folder / "images" / f"{i}.png") for i in ids])
    ]
    assert calls == ["PNEUMONIA", "PNEUMONIA", "NORMAL", "PNEUMONIA"]
    assert saved["rate"] == pytest.approx(0.667)  # 2 of the 3 normal films; the TB film is not counted
    (run / "val_metrics.json").write_text(json.dumps({"roc_auc": 0.99}))
    assert d.figures(run)["external normals called pneumonia"] == pytest.approx(66.7)
    (folder / "manifest.csv").unlink()  # measured once: a second call reads the kept figure, not the films
    d.external_rate(run, str(folder))
    assert json.loads((run / "external.json").read_text()) == saved
