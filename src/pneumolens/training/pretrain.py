"""Self-supervised pretraining of the classifier's features on unlabelled films (SimSiam).

Chen & He, "Exploring Simple Siamese Representation Learning" (CVPR 2021): two augmented views of
each film pass through the network's feature extractor (average-pooled) and a projector; a
predictor on top of one branch must match the other branch's projection, whose gradient is
stopped. The loss is the negative cosine similarity, symmetrised. No label is read, and only the
training part of the patient split is seen (validation stays unseen, as in supervised training).
``pneumolens train --ssl-epochs N`` runs it before supervised training, in the same run
directory (``RUN/pretrain/backbone.safetensors``), and starts the classifier from its features.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file, save_file
from torch import nn

from pneumolens.checkpoint import atomic_write
from pneumolens.config import AugmentConfig, TrainConfig
from pneumolens.data.augment import augment_batch
from pneumolens.data.cache import CachedImages, to_model_input
from pneumolens.data.dataset import XrayDataModule
from pneumolens.data.sources import Sample
from pneumolens.models import create_model
from pneumolens.training.module import architecture_of

log = logging.getLogger(__name__)

BACKBONE_FILENAME = "backbone.safetensors"
HEAD_PREFIX = "fc."  # the classifier's last layer: not pretrained, left to its own initialisation

# Two views must differ enough that matching them needs anatomy, not pixels: larger affine ranges
# than supervised training (zoom 0.6-1.4 acts as SimSiam's random resized crop), intensity, blur and
# erasing. No mirroring: the heart's side is information.
VIEW_AUGMENT = AugmentConfig(rotation=15.0, shift=0.15, zoom=0.4, gamma=0.4, contrast=0.4, erase=0.5, blur=1.5)


def simsiam_loss(p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised negative cosine similarity, each projection's gradient stopped: in [-1, 1]."""
    d12 = F.cosine_similarity(p1, z2.detach(), dim=1).mean()
    d21 = F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    return -(d12 + d21) / 2


class SimSiam(L.LightningModule):
    def __init__(self, config: dict[str, Any], lr: float, proj_dim: int = 256, pred_dim: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig.from_dict(config)
        arch = architecture_of(self.cfg)
        self.model = create_model(arch["name"], **arch["kwargs"])
        c = self.model.num_features
        self.projector = nn.Sequential(
            nn.Linear(c, c, bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(inplace=True),
            nn.Linear(c, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, proj_dim),
        )
        self.lr = lr

    def on_fit_start(self) -> None:
        self.model.to(memory_format=torch.channels_last)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        view = to_model_input(x, self.cfg.preprocess.channels, partial(augment_batch, cfg=VIEW_AUGMENT))
        return view.contiguous(memory_format=torch.channels_last)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.model.forward_features(x).float().mean((2, 3)))
        return z, self.predictor(z)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        x = batch["image"]
        if len(x) < 2:  # batch norm needs two films; an (almost) empty batch is skipped
            return None
        z1, p1 = self._embed(self._view(x))
        z2, p2 = self._embed(self._view(x))
        loss = simsiam_loss(p1, z1, p2, z2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at epoch {self.current_epoch}")
        # spread of the normalised projections: about 1/sqrt(dim) when healthy, 0 when collapsed
        spread = F.normalize(z1.detach().float(), dim=1).std(0).mean()
        self.log("ssl_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("ssl_spread", spread, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": sched}


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights without its classification layer."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}


def load_backbone(model: nn.Module, path: str | os.PathLike[str], cfg: TrainConfig) -> None:
    """Copy pretrained feature weights from ``path`` into ``model`` (its last layer keeps its own).

    Raises:
        ValueError: the file was pretrained for another architecture or preprocessing, or its
            tensors do not fit the network (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pretrained backbone there (see `pneumolens pretrain`)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("pneumolens", "{}"))
    want = {"architecture": architecture_of(cfg), "preprocessing": cfg.to_dict()["preprocess"]}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"{path}: pretrained with {key} {meta.get(key)}, this run uses {value}")
    tensors = load_file(str(path))
    own = backbone_state(model)
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise ValueError(f"{path}: its tensors do not match the {want['architecture']['name']} network")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and all(k.startswith(HEAD_PREFIX) for k in missing)


def pretrain(
    cfg: TrainConfig, films: list[Sample], cache: CachedImages, val: list[Sample], out: str | os.PathLike[str]
) -> Path:
    """SimSiam for ``cfg.ssl_epochs`` on ``films`` (read from ``cache``; ``val`` only completes the
    data module), with ``cfg``'s network and seed; ``cfg.ssl_lr`` is per 256 films, scaled to
    ``cfg.ssl_batch_size``. Writes ``out/backbone.safetensors`` and returns its path."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    batch = cfg.ssl_batch_size
    loader = XrayDataModule(dataclasses.replace(cfg, batch_size=batch, balanced_sampler=False), films, val, None, cache)
    module = SimSiam(cfg.to_dict(), lr=cfg.ssl_lr * batch / 256)
    trainer = L.Trainer(
        max_epochs=cfg.ssl_epochs,
        accelerator=cfg.accelerator,
        devices=1,
        precision=_precision(cfg),
        deterministic=True,
        logger=CSVLogger(out, name="logs", version=""),
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=sys.stderr.isatty(),
        default_root_dir=out,
    )
    trainer.fit(module, train_dataloaders=loader.train_dataloader())
    final = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
    meta = {
        "architecture": architecture_of(cfg),
        "preprocessing": cfg.to_dict()["preprocess"],
        "pretraining": {
            "method": "simsiam",
            "epochs": cfg.ssl_epochs,
            "batch_size": batch,
            "lr": cfg.ssl_lr,
            "seed": cfg.seed,
            "films": len(films),
            "final": final,
            "wall_seconds": round(time.time() - t0, 1),
        },
    }
    log.info("pretraining: %d epochs on %d films in %.0f s, %s", cfg.ssl_epochs, len(films), time.time() - t0, final)
    spread = final.get("ssl_spread", 0.0)
    if spread < 0.2 / module.hparams.proj_dim**0.5:
        log.warning("%s: the projections collapsed (spread %s): the features learnt nothing", out, spread)
    path = out / BACKBONE_FILENAME
    atomic_write(path, lambda tmp: save_file(backbone_state(module.model), tmp, {"pneumolens": json.dumps(meta)}))
    return path


def _precision(cfg: TrainConfig) -> str:
    from pneumolens.training.fit import resolve_precision

    return resolve_precision(cfg.precision, cfg.accelerator)
