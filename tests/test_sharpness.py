"""Sharpness-aware minimisation: the gradient swap by hand, and inside a real Lightning step."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch import nn

from pneumolens.config import resolve_config
from pneumolens.training.module import Classifier
from pneumolens.training.sharpness import sharpness_aware_gradients


def test_the_gradient_is_taken_rho_along_the_normalised_gradient_on_a_quadratic():
    # L(w) = 0.5 * sum(a * w^2): g(w) = a * w, so the gradient at w + e is a * (w + e), e = rho * g / |g|
    a = torch.tensor([1.0, 4.0, 9.0])
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    before = w.detach().clone()
    loss = lambda: 0.5 * (a * w**2).sum()  # noqa: E731
    loss().backward()
    g = a * before
    e = 0.3 * g / g.norm()
    returned = sharpness_aware_gradients(nn.Identity(), [w], 0.3, loss)
    assert torch.allclose(w.grad, a * (before + e))
    assert torch.equal(w.detach(), before)  # restored bit for bit, not by a subtraction
    assert math.isclose(returned.item(), 0.5 * (a * (before + e) ** 2).sum().item(), rel_tol=1e-6)


def test_no_gradient_means_no_second_pass_and_untouched_weights():
    w = nn.Parameter(torch.ones(3))
    calls = []
    assert sharpness_aware_gradients(nn.Identity(), [w], 0.05, lambda: calls.append(1) or w.sum()) is None
    assert not calls and torch.equal(w.detach(), torch.ones(3))


def test_the_second_pass_normalises_by_the_batch_but_keeps_the_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).train()
    x = torch.randn(16, 4)
    model(x).pow(2).mean().backward()  # the first pass: moves the running statistics once
    stats = {k: v.clone() for k, v in model[1].state_dict().items() if k.startswith("running")}
    params = list(model.parameters())
    reference = copy.deepcopy(model)
    sharpness_aware_gradients(model, params, 0.05, lambda: model(x).pow(2).mean())
    for k, v in stats.items():
        assert torch.equal(model[1].state_dict()[k], v), k
    assert model[1].momentum == 0.1  # restored after the pass
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


class _RecordFirstPass(L.Callback):
    """Runs before the module's own hook: sees the gradients of the first pass at the weights w."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.at_w = copy.deepcopy(pl_module)
        self.grads = [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()]
        self.batch = pl_module._sam_batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.used = [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()]


def _one_step(rho: float, forwards: list[int]) -> _RecordFirstPass:
    cfg = resolve_config(
        "default", sam_rho=rho, rotation=0.0, shift=0.0, zoom=0.0, model_kwargs={"dropout": 0.0}, ema_decay=0.0
    )
    module = Classifier(cfg.to_dict(), [1.0, 3.0])
    next(module.model.children()).register_forward_hook(lambda *_: forwards.append(1))  # the stem: every pass
    torch.manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8),
        "label": torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]),
        "path": ["a_bacteria_1", "n1", "b_virus_2", "n2", "c_bacteria_3", "d_virus_4"],
        "skipped": [],
    }
    recorder = _RecordFirstPass()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return recorder


def test_a_training_step_steps_with_the_gradient_at_the_sharpness_aware_point():
    forwards: list[int] = []
    rec = _one_step(0.05, forwards)
    assert len(forwards) == 2  # one more forward pass per step
    assert rec.batch is not None
    # by hand: move a copy of the weights rho along the first pass's gradient, take the gradient there
    x, y, w, paths = rec.batch
    shifted = rec.at_w
    g = torch.cat([q.flatten() for q in rec.grads if q is not None])
    with torch.no_grad():
        for p, q in zip(shifted.parameters(), rec.grads, strict=True):
            if q is not None:
                p.add_(0.05 * q / g.norm())
    for p in shifted.parameters():
        p.grad = None
    for m in shifted.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0
    shifted._loss(x, y, w, paths)[0].backward()
    expected = [p.grad for p in shifted.parameters()]
    assert sum(q is not None for q in rec.used) == sum(q is not None for q in expected) > 10
    for used, want in zip(rec.used, expected, strict=True):
        if want is not None:
            assert torch.allclose(used, want, atol=1e-6, rtol=1e-4)
    moved = sum(not torch.allclose(u, f) for u, f in zip(rec.used, rec.grads, strict=True) if u is not None)
    assert moved > 10  # the swap did change the gradients


def test_without_rho_a_step_is_one_pass_with_the_plain_gradient():
    forwards: list[int] = []
    rec = _one_step(0.0, forwards)
    assert len(forwards) == 1 and rec.batch is None
    for u, f in zip(rec.used, rec.grads, strict=True):
        assert (u is None and f is None) or torch.equal(u, f)


def test_sam_rho_is_checked_by_name():
    with pytest.raises(ValueError, match="sam_rho"):
        resolve_config("default", sam_rho=-0.1)
    with pytest.raises(ValueError, match="16-bit"):
        resolve_config("default", sam_rho=0.05, precision="16-mixed")
    assert resolve_config("default", sam_rho=0.05, precision="bf16-mixed").sam_rho == 0.05
