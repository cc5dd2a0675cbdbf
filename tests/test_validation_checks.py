"""Validation-only benchmark helpers: half_refit.py's table row, tta.py's split, val_difference.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_benchmark
from pneumolens.checkpoint import load_model, save_model


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


def test_val_difference_pairs_a_model_with_itself_and_refuses_another_split(
    trained_run, tiny_data, tmp_path, capsys, monkeypatch
):
    script = load_benchmark("val_difference")
    args = ["val_difference.py", str(trained_run), str(trained_run), "--data", str(tiny_data), "--n-boot", "50"]
    monkeypatch.setattr("sys.argv", args)
    script.main()
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert "| +0.00000 | [+0.00000, +0.00000] |" in row  # the same scores: no difference, no spread

    loaded = load_model(trained_run)
    meta = {**loaded.meta, "config": {**loaded.meta["config"], "split_seed": 9}}
    other = save_model(tmp_path / "other.safetensors", loaded.model, meta)
    monkeypatch.setattr("sys.argv", ["val_difference.py", str(trained_run), str(other), "--data", str(tiny_data)])
    with pytest.raises(SystemExit, match="other.safetensors: not validated on the reference's split"):
        script.main()
    refit = save_model(
        tmp_path / "refit.safetensors",
        loaded.model,
        {**loaded.meta, "config": {**loaded.meta["config"], "refit": True}},
    )
    monkeypatch.setattr("sys.argv", ["val_difference.py", str(refit), str(trained_run), "--data", str(tiny_data)])
    with pytest.raises(SystemExit, match="refit.safetensors: a refit, trained on the validation films"):
        script.main()  # a refit's validation films are films it trained on, as reference too
