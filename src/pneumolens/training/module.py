"""The LightningModule: loss, optimiser, schedule, augmentation and metrics. No architecture here."""

from __future__ import annotations

import logging
import math
import re
from functools import partial
from pathlib import PurePath
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumolens.config import TrainConfig
from pneumolens.data.augment import augment_batch, mixup
from pneumolens.data.cache import to_model_input
from pneumolens.models import create_model
from pneumolens.training import adversary, group_dro
from pneumolens.training.distill import distill_loss
from pneumolens.training.sharpness import sharpness_aware_gradients
from pneumolens.training.state import rng_state, set_rng_state

log = logging.getLogger(__name__)


def architecture_of(cfg: TrainConfig) -> dict[str, Any]:
    """The JSON description that rebuilds the network: name and constructor kwargs."""
    kwargs = {"in_channels": cfg.preprocess.channels, "image_size": cfg.preprocess.image_size}
    return {"name": cfg.model, "kwargs": {**kwargs, **cfg.model_kwargs}}


_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def subtype_targets(paths: list[str]) -> torch.Tensor:
    """1 for a viral, 0 for a bacterial pneumonia, -1 where the file name does not say (Kaggle's
    ``personN_bacteria_M`` / ``personN_virus_M``; normal films and other sources are -1)."""
    found = [_SUBTYPE.search(PurePath(p).name) for p in paths]
    return torch.tensor([-1.0 if m is None else float(m.group(1).lower() == "virus") for m in found])


def known_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the images with a known target (>= 0; -1 means unknown); 0 when the
    batch has none."""
    known = targets >= 0
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
    return F.binary_cross_entropy_with_logits(logits[known], targets[known])


def film_bce(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Each film's cross-entropy. With ``smoothing`` e the targets move to e / 2 and 1 - e / 2, so no
    logit is pushed to infinity."""
    target = y * (1 - smoothing) + smoothing / 2 if smoothing > 0 else y
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Keras ``class_weight`` semantics: each sample's cross-entropy times its weight, mean over the batch."""
    return (film_bce(logits, y, smoothing) * w).mean()


def pairwise_rank_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """RankNet's logistic loss over every (pneumonia, normal) pair of the batch, log(1 + exp(s_n - s_p)):
    a smooth surrogate of 1 - ROC-AUC. 0 (graph kept) when the batch lacks a class."""
    pos, neg = logits[y >= 0.5], logits[y < 0.5]
    if not len(pos) or not len(neg):
        return logits.sum() * 0.0
    return F.softplus(neg[None, :] - pos[:, None]).mean()


class Classifier(L.LightningModule):
    def __init__(self, config: dict[str, Any], class_weights: list[float]) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain dicts and lists: the Lightning checkpoint stays resumable
        self.cfg = TrainConfig.from_dict(config)
        arch = architecture_of(self.cfg)
        self.model = create_model(arch["name"], **arch["kwargs"])
        if self.cfg.subtype_weight > 0:  # a head on the average-pooled features; not part of the saved model
            self.subtype_head = torch.nn.Linear(self.model.num_features, 1)
        if self.cfg.series_adversary > 0:  # the normal-series adversary (training.adversary); not saved either
            self.series_head = torch.nn.Linear(self.model.num_features, 1)
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        self.train_acc = BinaryAccuracy(threshold=self.cfg.threshold)
        self.val_acc = BinaryAccuracy(threshold=self.cfg.threshold)
        self.val_auroc = BinaryAUROC()
        self.skipped: dict[str, str] = {}
        self.film_weights: dict[str, float] = {}  # per-path loss factors (patient weighting); set by fit()
        self.first_epoch_paths: list[str] = []
        self._warned = 0
        self._teacher: list[torch.nn.Module] = []  # a list: not a submodule, so neither saved nor optimised
        self._sam_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]] | None = None
        # Group DRO's weights: a plain tensor, not a buffer, so the weight average leaves them alone;
        # they travel in the Lightning checkpoint (on_save_checkpoint) for resumed runs.
        self.group_weights = torch.full((len(group_dro.GROUPS),), 1 / len(group_dro.GROUPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B,) logits

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pneumolens_rng"] = rng_state()  # resumed runs draw what the uninterrupted one would
        if self.cfg.group_dro > 0:
            checkpoint["pneumolens_group_weights"] = self.group_weights.tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "pneumolens_rng" in checkpoint:
            set_rng_state(checkpoint["pneumolens_rng"])
        if "pneumolens_group_weights" in checkpoint:
            self.group_weights = torch.tensor(checkpoint["pneumolens_group_weights"])

    def set_teacher(self, teacher: torch.nn.Module) -> None:
        """Distil from ``teacher`` (frozen, eval mode) with weight ``cfg.distill_weight``."""
        self._teacher = [teacher]

    def on_fit_start(self) -> None:
        # channels-last lets oneDNN / cuDNN pick their fastest convolution kernels
        self.model.to(memory_format=torch.channels_last)
        for teacher in self._teacher:
            teacher.to(self.device, memory_format=torch.channels_last)

    def _input(self, batch: dict[str, Any], augment: bool) -> torch.Tensor:
        transform = partial(augment_batch, cfg=self.cfg.augment) if augment else None
        x = to_model_input(batch["image"], self.cfg.preprocess.channels, transform)
        return x.contiguous(memory_format=torch.channels_last)

    def _note_skipped(self, batch: dict[str, Any]) -> None:
        for path, reason in batch["skipped"]:
            self.skipped.setdefault(path, reason)

    def _main_loss(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, paths: list[str], update: bool
    ) -> torch.Tensor:
        """The weighted cross-entropy, or with ``group_dro`` the groups' weighted mean losses (the
        group weights take one step first when ``update``, as in the paper's algorithm)."""
        if self.cfg.group_dro <= 0:
            return weighted_bce(logits, y, w, self.cfg.label_smoothing)
        labels = y.round().long().tolist()
        groups = torch.tensor([group_dro.group_of(p, c) for p, c in zip(paths, labels, strict=True)])
        sums, counts = group_dro.group_sums(film_bce(logits, y, self.cfg.label_smoothing), groups.to(logits.device))
        if update:
            total_sums, total_counts = sums.detach(), counts
            if self.trainer.world_size > 1:  # every process takes the same step
                total_sums = self.trainer.strategy.reduce(total_sums, reduce_op="sum")
                total_counts = self.trainer.strategy.reduce(total_counts, reduce_op="sum")
            self.group_weights = group_dro.updated_weights(
                self.group_weights.to(sums.device), total_sums, total_counts, self.cfg.group_dro
            )
        return group_dro.robust_loss(self.group_weights.to(sums.device), sums, counts)

    def _loss(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, paths: list[str], update: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, the logits and the auxiliary heads' losses by name (``subtype``, ``series``;
        empty without heads). ``update``: whether this pass may move the group weights (not the second
        pass of sharpness-aware minimisation)."""
        aux: dict[str, torch.Tensor] = {}
        if self.cfg.subtype_weight > 0 or self.cfg.series_adversary > 0:  # heads share the features: one pass
            f = self.model.forward_features(x)
            logits = self.model.forward_head(f).float()
            pooled = f.float().mean((2, 3))
            loss = self._main_loss(logits, y, w, paths, update)
            if self.cfg.subtype_weight > 0:
                aux["subtype"] = known_bce(self.subtype_head(pooled).squeeze(1), subtype_targets(paths).to(x.device))
                loss = loss + self.cfg.subtype_weight * aux["subtype"]
            if self.cfg.series_adversary > 0:
                progress = self.global_step / max(1, self.trainer.estimated_stepping_batches) if self._trainer else 1.0
                reversed_ = adversary.reverse_gradient(pooled, adversary.reversal_coefficient(progress))
                targets = adversary.series_targets(paths, y.round().long().tolist()).to(x.device)
                aux["series"] = known_bce(self.series_head(reversed_).squeeze(1), targets)
                loss = loss + self.cfg.series_adversary * aux["series"]
        else:
            logits = self(x).float()  # through forward(), like every other step
            loss = self._main_loss(logits, y, w, paths, update)
        if self.cfg.rank_weight > 0:
            loss = loss + self.cfg.rank_weight * pairwise_rank_loss(logits, y)
        if self._teacher:
            with torch.no_grad():
                teacher_logits = self._teacher[0](x)
            loss = loss + self.cfg.distill_weight * distill_loss(logits, teacher_logits)
        return loss, logits, aux

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._note_skipped(batch)
        self._sam_batch = None
        x, y = batch["image"], batch["label"]
        if not x.numel():
            return None  # every file of this batch was unreadable: skip the step
        if self.current_epoch == 0:
            self.first_epoch_paths.extend(batch["path"])  # which shard this rank saw (distributed runs)
        w = self.class_weights[y.long()]
        if self.film_weights:
            w = w * torch.tensor([self.film_weights[p] for p in batch["path"]], dtype=w.dtype, device=w.device)
        x, y, w = mixup(self._input(batch, augment=True), y, w, self.cfg.augment.mixup)
        loss, logits, aux = self._loss(x, y, w, batch["path"])
        for name, value in aux.items():
            self.log(f"train_{name}_loss", value, on_step=False, on_epoch=True, batch_size=len(y))
        if self.cfg.sam_rho > 0:  # the second pass sees the same augmented batch
            self._sam_batch = (x, y, w, batch["path"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}"
            )
        self.train_acc(torch.sigmoid(logits), (y >= 0.5).long())  # mixup makes labels soft
        bs = len(y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``sam_rho`` > 0: swap the gradients for those at the sharpness-aware point (one more pass)."""
        if self.cfg.sam_rho <= 0 or self._sam_batch is None:
            return
        x, y, w, paths = self._sam_batch
        self._sam_batch = None
        strategy = self.trainer.strategy

        def mean_over_processes(g: torch.Tensor) -> torch.Tensor:  # DDP averaged the first pass's gradients itself
            return strategy.reduce(g, reduce_op="mean") if self.trainer.world_size > 1 else g

        params = [p for p in self.parameters() if p.requires_grad]
        with self.trainer.precision_plugin.train_step_context():  # the same autocast as the first pass
            loss_at = lambda: self._loss(x, y, w, paths, update=False)[0]  # noqa: E731
            sharpness_aware_gradients(self, params, self.cfg.sam_rho, loss_at, reduce=mean_over_processes)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._note_skipped(batch)
        x, y = batch["image"], batch["label"]
        if not x.numel():
            return
        logits = self(self._input(batch, augment=False)).float()
        # Validation loss is unweighted, as in Keras: it measures calibration on the true mix.
        loss = F.binary_cross_entropy_with_logits(logits, y)
        p = torch.sigmoid(logits)
        self.val_acc(p, y.long())
        self.val_auroc(p, y.long())
        bs = len(y)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("val_auroc", self.val_auroc, on_epoch=True, batch_size=bs)

    def on_train_epoch_end(self) -> None:
        if self.cfg.group_dro > 0:
            for name, q in zip(group_dro.GROUPS, self.group_weights.tolist(), strict=True):
                self.log(f"group_weight_{name.replace('/', '_')}", q, on_epoch=True)
        if len(self.skipped) > self._warned:
            first = next(iter(self.skipped.items()))
            log.warning("skipped %d unreadable file(s) so far, e.g. %s (%s)", len(self.skipped), first[0], first[1])
            self._warned = len(self.skipped)

    def configure_optimizers(self) -> Any:
        c = self.cfg
        if c.optimizer == "rmsprop":  # Keras RMSprop defaults: rho 0.9, epsilon 1e-7
            opt = torch.optim.RMSprop(self.parameters(), lr=c.lr, alpha=0.9, eps=1e-7, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {c.optimizer!r}; valid: rmsprop, adamw, sgd")
        if c.scheduler == "plateau":
            # torch reduces after `patience` + 1 bad epochs; Keras (the seed) after `patience`.
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(0, c.patience - 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if c.scheduler == "cosine":
            if c.warmup_epochs <= 0:  # per epoch, as the shipped default was trained
                return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, c.epochs)}
            # per step: linear warm-up over the first epochs, then cosine decay to zero
            total = max(1, self.trainer.estimated_stepping_batches)
            warm = max(1, c.warmup_epochs * total // max(1, c.epochs))

            def factor(step: int) -> float:
                if step < warm:
                    return 0.01 + 0.99 * step / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"unknown scheduler {c.scheduler!r}; valid: plateau, cosine")
