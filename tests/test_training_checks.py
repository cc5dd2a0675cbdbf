from __future__ import annotations

from pneumolens.config import resolve_config
from pneumolens.training.fit import unlearned


def test_a_model_that_did_not_learn_is_called_out():
    # runs/v3/ema998 of the README: EMA decay 0.998 over 7 epochs, validation ROC-AUC 0.369
    default = resolve_config("default")
    problem = unlearned({"roc_auc": 0.369}, default)
    assert problem and "0.369" in problem and "--ema-decay 0.99" in problem
    assert "ema" not in (unlearned({"roc_auc": 0.5}, resolve_config("seed")) or "").lower()
    assert unlearned({"roc_auc": 0.5}, resolve_config("seed")) is not None
    assert unlearned({"roc_auc": 0.99}, default) is None
    assert unlearned({"roc_auc": None}, default) is None  # one class only: no AUC to judge by
