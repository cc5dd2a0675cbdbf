"""Distillation from a trained model: the loss by hand, the teacher's checks, a real training run."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import train_cli
from pneumolens.checkpoint import ModelFileError, load_model
from pneumolens.config import TrainConfig, resolve_config
from pneumolens.models.resnet_small import ResNetSmall
from pneumolens.training.distill import distill_loss, load_teacher
from pneumolens.training.module import Classifier, weighted_bce


def test_distill_loss_by_hand_and_inside_the_training_loss():
    # teacher logit 0 -> target 0.5: the loss of student logit 2 is -0.5 log s(2) - 0.5 log(1 - s(2))
    s = 1 / (1 + math.exp(-2))
    expected = -0.5 * math.log(s) - 0.5 * math.log(1 - s)
    assert math.isclose(distill_loss(torch.tensor([2.0]), torch.tensor([0.0])).item(), expected, rel_tol=1e-6)
    # it is smallest where the student agrees with the teacher
    t = torch.tensor([1.5])
    assert distill_loss(t, t) < distill_loss(t + 1, t) and distill_loss(t, t) < distill_loss(t - 1, t)

    cfg = resolve_config("default", teacher="unused.safetensors", distill_weight=0.7, subtype_weight=0.0)
    module = Classifier(cfg.to_dict(), [1.0, 3.0]).eval()
    torch.manual_seed(0)
    teacher = ResNetSmall().eval()
    module.set_teacher(teacher)
    x, y, w = torch.randn(4, 1, 32, 32), torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.ones(4)
    with torch.no_grad():
        loss, logits, _ = module._loss(x, y, w, ["a", "b", "c", "d"])
        want = weighted_bce(logits, y, w) + 0.7 * F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher(x)))
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)
    assert not any("teacher" in k for k in module.state_dict())  # neither saved nor optimised
    assert all(p is not q for p in module.parameters() for q in teacher.parameters())


def test_teacher_and_weight_go_together():
    with pytest.raises(ValueError, match="go together"):
        resolve_config("default", teacher="t.safetensors")
    with pytest.raises(ValueError, match="go together"):
        resolve_config("default", distill_weight=1.0)
    with pytest.raises(ValueError, match="distill_weight"):
        resolve_config("default", teacher="t.safetensors", distill_weight=-1.0)


def test_a_teacher_from_another_split_or_input_is_refused_by_name(trained_run, tmp_path):
    own = TrainConfig.from_dict(load_model(trained_run).meta["config"])  # seed preset, seed 3, 32 px
    matched = dataclasses.replace(own, teacher=str(trained_run), distill_weight=1.0)
    teacher = load_teacher(matched)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="patient_split_seed=3.*uses 42.*validation films"):
        load_teacher(dataclasses.replace(matched, split_seed=42))
    other_input = dataclasses.replace(matched, preprocess=dataclasses.replace(matched.preprocess, image_size=64))
    with pytest.raises(ValueError, match="image_size.*32, 64"):
        load_teacher(other_input)
    with pytest.raises(ModelFileError, match="nowhere"):
        load_teacher(dataclasses.replace(matched, teacher=str(tmp_path / "nowhere")))


def test_training_with_a_teacher_ships_a_plain_student(tiny_data, trained_run, tmp_path, capsys):
    out = tmp_path / "student"
    assert train_cli(tiny_data, out, "--seed", "3", "--teacher", str(trained_run), "--distill-weight", "0.5") == 0
    student = load_model(out)
    assert student.meta["config"]["teacher"] == str(trained_run)
    assert set(student.model.state_dict()) == set(load_model(trained_run).model.state_dict())
    # another split: refused before any image is read, nothing written
    bad = tmp_path / "refused"
    assert train_cli(tiny_data, bad, "--seed", "4", "--teacher", str(trained_run), "--distill-weight", "0.5") != 0
    assert "patient_split_seed=3" in capsys.readouterr().err and not bad.exists()
