"""Lightning callbacks with the semantics the recipes need: early stopping and best-checkpoint
selection that start at a given epoch (Keras' ``start_from_epoch``), and the weight average."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, WeightAveraging


class _FromEpoch(L.Callback):
    """Ignore the epochs before ``start`` (Keras' ``start_from_epoch``): the epochs of a warm-up, or of a
    weight average still catching up, neither stop training nor count as the best. (Lightning's
    ``min_epochs`` only defers a stop that those epochs have already earned.)"""

    def __init__(self, start: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the Lightning callback's own arguments
        self.start = start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.start:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.start:
            super().on_validation_end(trainer, pl_module)


class EarlyStoppingFrom(_FromEpoch, EarlyStopping):
    """``EarlyStopping(**kwargs)`` that watches from epoch ``start`` on."""


class BestCheckpointFrom(_FromEpoch, ModelCheckpoint):
    """``ModelCheckpoint(**kwargs)`` whose best is chosen among the epochs from ``start`` on."""


def warmed_ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first ``n`` updates
    (the warm-up of timm's ``ModelEmaV2``): early on the average follows the model instead of holding on
    to the untrained weights."""

    @torch.no_grad()
    def update(ema: torch.Tensor, current: torch.Tensor, num_averaged: Any) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * ema + (1 - d) * current

    return update


def weight_average(decay: float, warmup: bool = False) -> L.Callback:
    """The averaged weights are the ones validated, checkpointed and shipped (batch-norm statistics too)."""
    if warmup:
        return WeightAveraging(use_buffers=True, avg_fn=warmed_ema(decay))
    return EMAWeightAveraging(decay=decay, use_buffers=True)
