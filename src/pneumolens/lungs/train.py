"""Training the lung segmenter from scratch on the NLM Montgomery + Shenzhen masks.

    pneumolens train-lungs --data ../shared/data/lung_masks --out runs/lungs

The manifest's ``split`` column decides train / val / test; the best epoch is chosen on val Dice.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from monai.losses import DiceCELoss
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pneumolens.checkpoint import save_model
from pneumolens.config import AugmentConfig
from pneumolens.data.augment import random_affine
from pneumolens.lungs.masks import dice
from pneumolens.models import create_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LungTrainConfig:
    image_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 2
    epochs: int = 40
    max_minutes: float = 14.0  # hard stop: the whole run must fit 15 minutes on a 2-core CPU
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # wide geometric range: pediatric films show more of the body around smaller lungs
    augment: AugmentConfig = AugmentConfig(rotation=12.0, shift=0.1, zoom=0.25)
    seed: int = 0


@dataclass(frozen=True)
class MaskRow:
    id: str
    source: str
    age: int | None
    split: str


def read_rows(root: str | os.PathLike[str]) -> list[MaskRow]:
    rows = []
    with open(Path(root) / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            age = int(r["age"]) if r.get("age", "").strip().isdigit() else None
            rows.append(MaskRow(r["id"], r["source"], age, r["split"]))
    return rows


def load_pair(root: Path, row: MaskRow) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], boolean mask), both at the files' 256x256."""
    img = np.asarray(Image.open(root / "images" / f"{row.id}.png").convert("L"), dtype=np.float32) / 255.0
    mask = np.asarray(Image.open(root / "masks" / f"{row.id}.png")) > 127
    return img, mask


def _tensors(root: Path, rows: list[MaskRow], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, masks = zip(*(load_pair(root, r) for r in rows), strict=True)
    x = torch.from_numpy(np.stack(imgs))[:, None]  # (N, 1, 256, 256)
    y = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = (F.interpolate(y, size=(size, size), mode="area") > 0.5).float()
    return x, y


def random_intensity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random gamma (0.6-1.6) and contrast/brightness, per image: other scanners, other exposures."""
    b = x.shape[0]
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(math.log(0.6), math.log(1.6), generator=generator))
    scale = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=generator)
    offset = torch.empty(b, 1, 1, 1).uniform_(-0.1, 0.1, generator=generator)
    return (x.clamp(0, 1) ** gamma * scale + offset).clamp(0, 1)


def synthetic_consolidation(
    x: torch.Tensor, y: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Whiten random smooth patches inside the lungs, most of one side, keeping the label "lung".

    The manual masks follow aerated lung, so a net trained on them alone calls a consolidated
    (white) lung "not lung" and grabs dark background instead; these patches teach it otherwise.
    """
    b, _, h, w = x.shape
    field = F.interpolate(torch.rand(b, 1, 6, 6, generator=generator), size=(h, w), mode="bicubic")
    level = torch.empty(b, 1, 1, 1).uniform_(0.15, 0.6, generator=generator)
    blob = torch.sigmoid((field - level) * 12)
    side = torch.rand(b, generator=generator) < 0.5  # which lung gets most of it
    cols = torch.linspace(0, 1, w).view(1, 1, 1, w)
    half = torch.where(side.view(b, 1, 1, 1), torch.sigmoid((cols - 0.5) * 20), torch.sigmoid((0.5 - cols) * 20))
    region = blob * y * (0.3 + 0.7 * half)
    strength = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.0, generator=generator)
    strength = strength * (torch.rand(b, 1, 1, 1, generator=generator) < p)
    target = torch.empty(b, 1, 1, 1).uniform_(0.55, 0.9, generator=generator)
    a = (strength * region).clamp(0, 1)
    return x * (1 - a) + target * a


class LungSegmentation(L.LightningModule):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = _config_from_dict(config)
        self.model = create_model("lung_unet", **architecture_of(self.cfg)["kwargs"])
        self.loss = DiceCELoss(sigmoid=True)
        self._val_dice: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        both = random_affine(torch.cat([x, y], dim=1), self.cfg.augment)  # one transform for image and mask
        y = (both[:, 1:] > 0.5).float()
        x = random_intensity(synthetic_consolidation(both[:, :1], y))
        loss = self.loss(self.model(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = (self.model(x) > 0).cpu().numpy()
        self._val_dice += [dice(p[0], t[0]) for p, t in zip(pred, y.cpu().numpy() > 0.5, strict=True)]

    def on_validation_epoch_end(self) -> None:
        self.log("val_dice", float(np.mean(self._val_dice)) if self._val_dice else 0.0, prog_bar=True)
        self._val_dice = []

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, self.cfg)


def best_epoch_trainer(out: Path, epochs: int, monitor: str, **kwargs: Any) -> tuple[L.Trainer, ModelCheckpoint]:
    """A deterministic one-device trainer writing under ``out``, and its checkpoint of the epoch with
    the highest ``monitor``; ``kwargs`` go to ``L.Trainer``."""
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max")
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        deterministic=True,
        logger=CSVLogger(out, name="logs", version=""),
        callbacks=[ckpt],
        num_sanity_val_steps=0,
        default_root_dir=out,
        **kwargs,
    )
    return trainer, ckpt


def fit_best_epoch(
    module: L.LightningModule, trainer: L.Trainer, ckpt: ModelCheckpoint, train: DataLoader, val: DataLoader
) -> torch.nn.Module:
    """Fit ``module`` with ``trainer`` (from :func:`best_epoch_trainer`), load the weights of the epoch
    ``ckpt`` kept, and return ``module.model`` on the CPU in eval mode."""
    trainer.fit(module, train, val)
    module.load_state_dict(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    return module.model.cpu().eval()


def adamw_cosine(module: L.LightningModule, cfg: Any) -> dict[str, Any]:
    """AdamW at ``cfg.lr`` / ``cfg.weight_decay``, the rate cosine-annealed over ``cfg.epochs`` (per epoch)."""
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)}


def config_from_dict(cls: type, d: dict[str, Any], tuples: tuple[str, ...]) -> Any:
    """A frozen training config back from its ``dataclasses.asdict`` (Lightning's saved hyperparameters):
    the augmentation rebuilt, and the fields in ``tuples`` (lists after a round trip) tuples again."""
    d = dict(d)
    d["augment"] = AugmentConfig(**d.get("augment", {}))
    for name in tuples:
        d[name] = tuple(d.get(name, getattr(cls, name)))
    return cls(**d)


def _config_from_dict(d: dict[str, Any]) -> LungTrainConfig:
    return config_from_dict(LungTrainConfig, d, ("channels",))


def architecture_of(cfg: LungTrainConfig) -> dict[str, Any]:
    kwargs = {
        "in_channels": 1,
        "image_size": cfg.image_size,
        "channels": list(cfg.channels),
        "num_res_units": cfg.num_res_units,
    }
    return {"name": "lung_unet", "kwargs": kwargs}


def fit_lungs(data: str | os.PathLike[str], out: str | os.PathLike[str], cfg: LungTrainConfig) -> Path:
    """Train, pick the best epoch on val Dice, score test rows, write ``out/lungs.safetensors``."""
    from pneumolens.lungs.segment import LungSegmenter  # scoring uses the same path as inference

    t0 = time.time()
    root, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    rows = read_rows(root)
    by_split = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test")}
    train_ds = TensorDataset(*_tensors(root, by_split["train"], cfg.image_size))
    val_ds = TensorDataset(*_tensors(root, by_split["val"], cfg.image_size))
    module = LungSegmentation(dataclasses.asdict(cfg))
    trainer, ckpt = best_epoch_trainer(
        out, cfg.epochs, "val_dice", max_time={"minutes": cfg.max_minutes}, log_every_n_steps=5
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    model = fit_best_epoch(module, trainer, ckpt, train, DataLoader(val_ds, batch_size=32))
    meta = {
        "name": "pneumolens-lungs",
        "task": "lung-segmentation",
        "architecture": architecture_of(cfg),
        "preprocessing": {"image_size": cfg.image_size, "channels": 1, "interpolation": "bilinear"},
        "threshold": 0.5,
        "config": dataclasses.asdict(cfg),
        "training": {"epochs_run": trainer.current_epoch, "wall_seconds": round(time.time() - t0, 1)},
    }
    path = save_model(out / "lungs.safetensors", model, meta)
    scores = score_rows(LungSegmenter.from_file(path), root, rows)
    meta["metrics"] = scores
    save_model(path, model, meta)  # again, now with its test scores recorded
    return path


def score_rows(seg, root: Path, rows: list[MaskRow]) -> dict[str, Any]:
    """Mean Dice at the masks' 256x256 for val and test rows: overall, per source, and children (<= 12)."""

    def row_dice(r: MaskRow) -> float:
        img, target = load_pair(root, r)
        return dice(seg.mask(img), target)

    scores: dict[str, Any] = {}
    for split in ("val", "test"):
        part = [r for r in rows if r.split == split]
        d = {r.id: row_dice(r) for r in part}
        groups = {
            "all": part,
            "montgomery": [r for r in part if r.source == "montgomery"],
            "shenzhen": [r for r in part if r.source == "shenzhen"],
            "children_le_12": [r for r in part if r.age is not None and r.age <= 12],
        }
        scores[split] = {
            k: {"dice": float(np.mean([d[r.id] for r in g])) if g else None, "n": len(g)} for k, g in groups.items()
        }
    # children are few in val/test (3 + 1): score all 17, noting that 13 were trained on
    kids = [r for r in rows if r.age is not None and r.age <= 12]
    scores["children_all_splits"] = {
        "dice": float(np.mean([row_dice(r) for r in kids])),
        "n": len(kids),
        "n_in_train": sum(r.split == "train" for r in kids),
    }
    return scores
