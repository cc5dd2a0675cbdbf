"""Validation-only benchmark helpers: benchmarks/half_refit.py's table row, benchmarks/tta.py's split."""

from __future__ import annotations

import json

import numpy as np

from conftest import load_benchmark


def test_half_refit_row_by_hand():
    # 4 normals (one at 0.6, above the stored 0.5), 4 pneumonia films (one at 0.4, below it)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.45, 0.6, 0.4, 0.7, 0.8, 0.9])
    cells = [c.strip() for c in load_benchmark("half_refit").row("m", y, p, 0.5).strip("|").split("|")]
    # ROC-AUC: the 0.4 film outranks two normals, the other three all four: 14 of 16 pairs.
    # At 0.5: 3 of 4 films each way. For 97% sensitivity every pneumonia film (threshold 0.4) must be
    # called, which leaves the normals at 0.1 and 0.2: 50%.
    assert cells == ["m", "8", "0.87500", "0.500", "75.0%", "75.0%", "50.0%"]


def test_tta_reads_a_model_files_split_from_its_config(trained_run, tiny_data, tmp_path):
    tta = load_benchmark("tta")
    recorded = json.loads((trained_run / "split.json").read_text())["val"]
    assert tta.val_paths(trained_run, str(tiny_data)) == recorded  # a run: its split.json
    bare = tmp_path / "model.safetensors"  # a model file alone: the split its config draws again
    bare.write_bytes((trained_run / "model.safetensors").read_bytes())
    assert tta.val_paths(bare, str(tiny_data)) == recorded
    assert recorded
