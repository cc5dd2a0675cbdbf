from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from conftest import CHEST
from pneumolens.config import resolve_config
from pneumolens.data.dataset import patient_weights
from pneumolens.data.sources import Sample, find_split
from pneumolens.training.callbacks import BestCheckpointFrom, EarlyStoppingFrom, warmed_ema, weight_average
from pneumolens.training.fit import average_may_lag, unlearned
from pneumolens.training.module import Classifier, known_bce, pairwise_rank_loss, subtype_targets, weighted_bce


def test_a_model_that_did_not_learn_is_called_out():
    # runs/v3/ema998 of the README: EMA decay 0.998 over 7 epochs, validation ROC-AUC 0.369
    recipe = resolve_config("crop_clahe")  # the recipe of those runs
    problem = unlearned({"roc_auc": 0.369}, recipe)
    assert problem and "0.369" in problem and "--ema-decay 0.99" in problem
    assert "ema" not in (unlearned({"roc_auc": 0.5}, resolve_config("seed")) or "").lower()
    assert unlearned({"roc_auc": 0.5}, resolve_config("seed")) is not None
    assert unlearned({"roc_auc": 0.99}, recipe) is None
    assert unlearned({"roc_auc": None}, recipe) is None  # one class only: no AUC to judge by
    # runs/v4/bs64 of the README: batch 64, early stopping after 6 of 16 epochs, best epoch 0, AUC 0.754
    early = unlearned({"roc_auc": 0.754}, recipe, best_epoch=0, epochs_run=6)
    assert early and "after 6 of 16 epochs" in early
    assert "--start-from-epoch 8" in early and "--patience (now 5)" in early and "--ema-warmup" in early
    seed_early = unlearned({"roc_auc": 0.9}, resolve_config("seed"), best_epoch=0, epochs_run=4)
    assert seed_early and "--ema-warmup" not in seed_early  # the seed recipe has no weight average
    assert unlearned({"roc_auc": 0.98}, recipe, best_epoch=0, epochs_run=16) is None  # ran to the end
    assert unlearned({"roc_auc": 0.98}, recipe, best_epoch=3, epochs_run=9) is None  # stopped after learning
    with pytest.raises(ValueError, match="start_from_epoch"):
        resolve_config("crop_clahe", start_from_epoch=20)  # more than the 16 epochs
    assert resolve_config("crop_clahe", start_from_epoch=20, epochs=24).start_from_epoch == 20


@pytest.mark.parametrize(
    ("n_train", "overrides", "warns"),
    [
        (4470, {}, False),  # the crop_clahe recipe: 140 steps per epoch, every run learnt
        (4470, {"batch_size": 64}, True),  # 70 steps: runs/v4/bs64 kept its epoch-0 weights
        (2554, {}, True),  # 80 steps: a label_issues.py fold without warm-up did the same
        (2554, {"ema_warmup": True}, False),  # the remedy
        (2554, {"start_from_epoch": 8}, False),  # the other remedy
        (2554, {"ema_decay": 0.0}, False),  # no average, nothing to lag
        (4470, {"devices": 2, "strategy": "ddp"}, True),  # two ranks: 70 steps each
    ],
)
def test_a_lagging_weight_average_is_announced_before_training(n_train, overrides, warns):
    cfg = resolve_config("crop_clahe", **overrides)
    msg = average_may_lag(cfg, n_train)
    assert (msg is not None) == warns
    if warns:
        assert f"batch {cfg.batch_size}" in msg and "--ema-warmup" in msg


def test_weighted_loss_and_label_smoothing_by_hand():
    logits, y, w = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 3.0])
    # sample 0: -log(sigmoid(0)) = log 2; sample 1: -log(1 - sigmoid(2)) = log(1 + e^2), weighted 3
    expected = (math.log(2) + 3 * math.log(1 + math.e**2)) / 2
    assert math.isclose(weighted_bce(logits, y, w).item(), expected, rel_tol=1e-6)
    # smoothing 0.2: targets 0.9 and 0.1; the loss is minimal at logit log(9), not at infinity
    z = torch.tensor([math.log(9), 20.0])
    ones = torch.ones(2)
    smoothed = [weighted_bce(z[i : i + 1], ones[:1], ones[:1], 0.2).item() for i in range(2)]
    assert smoothed[0] < smoothed[1]
    assert weighted_bce(z[1:], ones[:1], ones[:1]).item() < 1e-8  # unsmoothed: the confident logit wins
    with pytest.raises(ValueError, match="label_smoothing"):
        resolve_config("default", label_smoothing=1.0)


def test_pairwise_rank_loss_by_hand_and_in_the_training_loss():
    # pneumonia logits 2 and 0, normal 1: pairs (2, 1) and (0, 1) -> log(1 + e^-1) and log(1 + e^1)
    logits, y = torch.tensor([2.0, 1.0, 0.0], requires_grad=True), torch.tensor([1.0, 0.0, 1.0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert math.isclose(pairwise_rank_loss(logits, y).item(), expected, rel_tol=1e-6)
    one_class = pairwise_rank_loss(logits, torch.ones(3))
    assert one_class.item() == 0.0 and one_class.requires_grad  # no pair: nothing to rank, graph kept
    # a correctly ranked batch costs less than the same logits ranked the other way
    assert (
        pairwise_rank_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0]))
        < math.log(2)
        < pairwise_rank_loss(torch.tensor([-3.0, 3.0]), torch.tensor([1.0, 0.0]))
    )
    cfg = resolve_config("default", rank_weight=0.5)
    module = Classifier(cfg.to_dict(), [1.0, 3.0]).eval()
    x = torch.randn(4, 1, 32, 32)
    y4, w4, paths = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.ones(4), ["a", "b", "c", "d"]
    with torch.no_grad():
        loss, logits4, aux = module._loss(x, y4, w4, paths)
        plain = weighted_bce(logits4, y4, w4) + 0.5 * aux["subtype"]
        assert math.isclose(loss.item(), (plain + 0.5 * pairwise_rank_loss(logits4, y4)).item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="rank_weight"):
        resolve_config("default", rank_weight=-1.0)
    with pytest.raises(ValueError, match="mixup"):
        resolve_config("default", rank_weight=0.5, mixup=0.2, subtype_weight=0.0)


def test_subtype_targets_and_loss_by_hand():
    paths = ["a/PNEUMONIA/person1_bacteria_1.jpeg", "b/person22_virus_54.jpeg", "c/NORMAL/IM-0001-0001.jpeg",
             "x/virus_notes/scan.png", "PERSON3_VIRUS_9.JPEG"]  # fmt: skip
    assert subtype_targets(paths).tolist() == [0.0, 1.0, -1.0, -1.0, 1.0]  # only the file name counts
    logits = torch.tensor([0.0, 2.0, 5.0, -5.0, 0.0])
    # images 0, 1 and 4: -log(1 - sigmoid(0)), -log(sigmoid(2)), -log(sigmoid(0)); the unknown two are ignored
    expected = (2 * math.log(2) + math.log(1 + math.exp(-2))) / 3
    assert math.isclose(known_bce(logits, subtype_targets(paths)).item(), expected, rel_tol=1e-6)
    none = torch.tensor([3.0], requires_grad=True)
    zero = known_bce(none, torch.tensor([-1.0]))
    zero.backward()
    assert zero.item() == 0.0 and none.grad is not None and none.grad.item() == 0.0
    with pytest.raises(ValueError, match="subtype_weight"):
        resolve_config("default", subtype_weight=-1.0)
    with pytest.raises(ValueError, match="--subtype-weight 0 to train with mixup"):
        resolve_config("default", mixup=0.2)  # the preset has the auxiliary loss
    assert resolve_config("default", mixup=0.2, subtype_weight=0.0).augment.mixup == 0.2


def test_training_with_the_subtype_head_ships_the_plain_model(tiny_data, tmp_path):
    from conftest import train_cli
    from pneumolens.checkpoint import load_model
    from pneumolens.training.fit import read_history

    assert (
        train_cli(tiny_data, tmp_path / "run", "--subtype-weight", "0.5", "--lungs", "none", preset="crop_clahe") == 0
    )
    history = read_history(tmp_path / "run" / "logs")
    assert history and math.isfinite(history[0]["train_subtype_loss"]) and history[0]["train_subtype_loss"] > 0
    loaded = load_model(tmp_path / "run")  # the head is training-only: the model file is the plain network
    assert loaded.meta["config"]["subtype_weight"] == 0.5
    assert not any("subtype" in k for k in loaded.model.state_dict())


class _ScriptedLoss(L.LightningModule):
    """A module whose validation loss per epoch is given: the early-stopping rules on their own."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses, self.w = losses, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.w - 1) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.losses[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return [torch.ones(1)]

    def val_dataloader(self):
        return [torch.ones(1)]


@pytest.mark.parametrize("start, epochs_run, best_epoch", [(0, 2, 0), (3, 6, 4)])
def test_early_stopping_and_best_checkpoint_ignore_the_epochs_before_start(tmp_path, start, epochs_run, best_epoch):
    losses = [0.1, 0.9, 0.8, 0.7, 0.6, 0.65, 0.5, 0.4]  # epoch 0 looks best only before the model learned
    best = BestCheckpointFrom(start, dirpath=tmp_path, filename="best", monitor="val_loss", mode="min")
    trainer = L.Trainer(
        max_epochs=len(losses),
        callbacks=[best, EarlyStoppingFrom(start, monitor="val_loss", mode="min", patience=1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(_ScriptedLoss(losses))
    assert trainer.current_epoch == epochs_run
    assert best.best_model_score.item() == pytest.approx(losses[best_epoch])


def test_the_warmed_average_follows_the_model_first_then_decays_as_asked():
    update = warmed_ema(0.99)
    ema, cur = torch.zeros(3), torch.ones(3)
    # first update: decay min(0.99, 1/10) = 0.1, so 90% of the current weights
    assert torch.allclose(update(ema, cur, torch.tensor(0)), torch.full((3,), 0.9))
    assert torch.allclose(update(ema, cur, torch.tensor(90)), torch.full((3,), 1 - 91 / 100))  # 0.91 < 0.99
    assert torch.allclose(update(ema, cur, torch.tensor(5000)), torch.full((3,), 0.01))  # capped at 0.99
    assert type(weight_average(0.99)).__name__ == "EMAWeightAveraging"  # the presets' average is unchanged
    assert weight_average(0.99, warmup=True)._kwargs["avg_fn"].__qualname__.startswith("warmed_ema")


def test_patient_weights_by_hand_and_on_the_real_file_names():
    films = [Sample("a1", 1, "A"), Sample("a2", 1, "A"), Sample("a3", 1, "A"), Sample("b1", 1, "B")]
    films += [Sample("c1", 0, "C"), Sample("c2", 0, "C")]
    w = patient_weights(films)
    # pneumonia: 4 films, 2 patients -> each patient sums to 2; A's 3 films 2/3 each, B's one film 2
    assert [round(w[p], 6) for p in ("a1", "a2", "a3", "b1", "c1", "c2")] == [0.666667] * 3 + [2.0, 1.0, 1.0]
    train = find_split(CHEST, "train")  # the file names of all 5,216 films (nothing is decoded)
    w = patient_weights(train)
    for label in (0, 1):
        of_class = [s for s in train if s.label == label]
        assert math.isclose(sum(w[s.path] for s in of_class), len(of_class), rel_tol=1e-9)  # class total kept
        per_patient: dict[str, float] = {}
        for s in of_class:
            per_patient[s.patient] = per_patient.get(s.patient, 0.0) + w[s.path]
        assert max(per_patient.values()) - min(per_patient.values()) < 1e-9  # every patient counts the same
        assert len(per_patient) < len(of_class)  # real patients have several films


def test_training_step_multiplies_the_film_weights_into_the_loss():
    cfg = resolve_config("default", rotation=0.0, shift=0.0, zoom=0.0, subtype_weight=0.0)
    module = Classifier(cfg.to_dict(), [1.0, 3.0]).eval()  # eval: no dropout, fixed batch-norm statistics
    torch.manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8),
        "label": torch.tensor([1.0, 0.0]),
        "path": ["p1", "n1"],
        "skipped": [],
    }
    with torch.no_grad():
        logits = module(module._input(batch, augment=False)).float()
        plain = weighted_bce(logits, batch["label"], torch.tensor([3.0, 1.0]))
        module.film_weights = {"p1": 0.5, "n1": 2.0}
        weighted = weighted_bce(logits, batch["label"], torch.tensor([1.5, 2.0]))
        assert math.isclose(module.training_step(batch, 0).item(), weighted.item(), rel_tol=1e-5)
        module.film_weights = {}
        assert math.isclose(module.training_step(batch, 0).item(), plain.item(), rel_tol=1e-5)
