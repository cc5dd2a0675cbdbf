"""Group DRO: the groups of real Kaggle names, the weight step by hand, and a real Lightning step."""

from __future__ import annotations

import copy
import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import real_images, train_cli
from pneumolens.checkpoint import load_model
from pneumolens.config import resolve_config
from pneumolens.training import group_dro
from pneumolens.training.module import Classifier


def test_the_groups_of_real_kaggle_file_names():
    normals = real_images("train", "NORMAL", 60)
    pneumonias = real_images("train", "PNEUMONIA", 60)
    groups = {group_dro.GROUPS[group_dro.group_of(str(p), 0)] for p in normals}
    assert groups == {"NORMAL/IM", "NORMAL/NORMAL2"}  # both acquisition series are in the sample
    for p in normals:
        in_series_2 = group_dro.group_of(str(p), 0) == group_dro.GROUPS.index("NORMAL/NORMAL2")
        assert in_series_2 == p.name.startswith("NORMAL2-")
    for p in pneumonias:
        want = "PNEUMONIA/virus" if "_virus_" in p.name else "PNEUMONIA/bacteria"
        assert group_dro.GROUPS[group_dro.group_of(str(p), 1)] == want
    assert group_dro.GROUPS[group_dro.group_of("site/film0001.dcm", 1)] == "PNEUMONIA/unnamed"  # says nothing
    assert group_dro.GROUPS[group_dro.group_of("site/film0002.dcm", 0)] == "NORMAL/unnamed"


def test_initial_weights_are_uniform_over_the_groups_present():
    q = group_dro.initial_weights(["IM-1.jpeg", "NORMAL2-IM-2.jpeg", "person1_virus_1.jpeg"], [0, 0, 1])
    assert q.tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0, 1 / 3, 0])
    with pytest.raises(ValueError, match="at least one"):
        group_dro.initial_weights([], [])


def test_one_weight_step_and_the_robust_loss_by_hand():
    losses = torch.tensor([1.0, 3.0, 0.5, 2.0])  # IM, IM, NORMAL2, virus
    groups = torch.tensor([0, 0, 1, 4])
    sums, counts = group_dro.group_sums(losses, groups)
    assert sums.tolist() == [4.0, 0.5, 0.0, 0.0, 2.0, 0.0] and counts.tolist() == [2.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    q = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25, 0.0])
    new = group_dro.updated_weights(q, sums, counts, eta=0.5)
    raw = [0.25 * math.exp(0.5 * 2.0), 0.25 * math.exp(0.5 * 0.5), 0.0, 0.25, 0.25 * math.exp(0.5 * 2.0), 0.0]
    assert new.tolist() == pytest.approx([r / sum(raw) for r in raw])  # bacterial absent: factor 1
    assert group_dro.robust_loss(new, sums, counts).item() == pytest.approx(
        (new[0] * 2.0 + new[1] * 0.5 + new[4] * 2.0).item()
    )
    assert torch.equal(group_dro.updated_weights(q, sums, counts, eta=0.0), q)  # no step, no change


def _one_step(sam_rho: float) -> tuple[Classifier, Classifier, dict]:
    """One Lightning training step of a group-DRO module; returns it, a copy from before the step, the batch."""
    cfg = resolve_config(
        "default", group_dro=0.5, class_weights="none", sam_rho=sam_rho, rotation=0.0, shift=0.0, zoom=0.0,
        model_kwargs={"dropout": 0.0}, ema_decay=0.0, subtype_weight=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    module = Classifier(cfg.to_dict(), [1.0, 1.0])
    paths = ["IM-0001-0001.jpeg", "NORMAL2-IM-0002-0001.jpeg", "person1_bacteria_1.jpeg", "person2_virus_2.jpeg"]
    module.group_weights = group_dro.initial_weights(paths, [0, 0, 1, 1])
    batch = {
        "image": torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8),
        "label": torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]),
        "path": [paths[0], paths[1], paths[1], paths[2], paths[2], paths[3], paths[2], paths[0]],
        "skipped": [],
    }
    before = copy.deepcopy(module)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return module, before, batch


@pytest.mark.parametrize("sam_rho", [0.0, 0.05])
def test_a_lightning_step_moves_the_weights_once_towards_the_worse_groups(sam_rho):
    module, before, batch = _one_step(sam_rho)
    before.train()  # the step saw batch statistics
    with torch.no_grad():
        logits = before(before._input(batch, augment=True)).float()  # the augmentation ranges are 0
    losses = F.binary_cross_entropy_with_logits(logits, batch["label"], reduction="none")
    groups = torch.tensor([group_dro.group_of(p, int(y)) for p, y in zip(batch["path"], batch["label"], strict=True)])
    sums, counts = group_dro.group_sums(losses, groups)
    want = group_dro.updated_weights(before.group_weights, sums, counts, 0.5)
    assert torch.allclose(module.group_weights, want, atol=1e-5)  # one step, also with the SAM second pass
    assert module.group_weights.sum().item() == pytest.approx(1.0)
    assert module.group_weights[group_dro.GROUPS.index("PNEUMONIA/unnamed")] == 0  # absent from training, stays out
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    worst, best = int(torch.argmax(means)), int(torch.argmin(torch.where(counts > 0, means, torch.inf)))
    assert module.group_weights[worst] > before.group_weights[worst]
    assert module.group_weights[best] < before.group_weights[best]


def test_the_weights_travel_in_the_lightning_checkpoint():
    cfg = resolve_config("default", group_dro=0.01, class_weights="none")
    a = Classifier(cfg.to_dict(), [1.0, 1.0])
    a.group_weights = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.1, 0.0])
    ckpt: dict = {}
    a.on_save_checkpoint(ckpt)
    b = Classifier(cfg.to_dict(), [1.0, 1.0])
    b.on_load_checkpoint(ckpt)
    assert torch.allclose(b.group_weights, a.group_weights)


def test_group_dro_is_checked_by_name():
    with pytest.raises(ValueError, match="group_dro must be >= 0"):
        resolve_config("default", group_dro=-0.1, class_weights="none")
    with pytest.raises(ValueError, match="class-weights none"):
        resolve_config("default", group_dro=0.01)  # the preset's balanced class weights
    with pytest.raises(ValueError, match="patient_weighting"):
        resolve_config("default", group_dro=0.01, class_weights="none", patient_weighting=True)
    with pytest.raises(ValueError, match="mixup"):
        resolve_config("default", group_dro=0.01, class_weights="none", mixup=0.2, subtype_weight=0.0)
    assert resolve_config("default", group_dro=0.01, class_weights="none").group_dro == 0.01


def test_a_real_training_logs_weights_that_favour_no_absent_group(tiny_data, tmp_path):
    out = tmp_path / "dro"
    rc = train_cli(tiny_data, out, "--group-dro", "0.05", "--class-weights", "none", preset="default", epochs=2)
    assert rc == 0
    rows = list(csv.DictReader(open(next((out / "logs").rglob("metrics.csv")))))
    last = [r for r in rows if r.get("group_weight_NORMAL_NORMAL2")][-1]
    q = {g: float(last[f"group_weight_{g.replace('/', '_')}"]) for g in group_dro.GROUPS}
    assert sum(q.values()) == pytest.approx(1.0, abs=1e-5)
    assert q["NORMAL/unnamed"] == q["PNEUMONIA/unnamed"] == 0.0  # every Kaggle film's name says its group
    assert min(q["NORMAL/IM"], q["NORMAL/NORMAL2"], q["PNEUMONIA/bacteria"], q["PNEUMONIA/virus"]) > 0
    assert len(set(q.values())) > 2  # the step moved them apart from uniform
    # the default preset's start epoch -1 kept the last of the two epochs, whatever its validation loss
    assert load_model(out).meta["training"]["best_epoch"] == 1
