"""Training the age check (``pneumolens.lungs.age_check``) from scratch.

    pneumolens train-age-check --data ../shared/data/chest_xray --lung-masks ../shared/data/lung_masks

Labels come from where a film is from and the age its source gives: 0 for the Kaggle films (children
aged one to five), 1 for the Shenzhen films of patients aged ``adult_age`` or more (the NLM manifest's
``age``). Training: the training part of the Kaggle ``default`` patient split (the pneumonia model's
validation films stay unseen) and the Shenzhen adults of the ``train`` rows; validation (best epoch,
threshold): the Kaggle validation films and the Shenzhen adults of the ``val`` rows. Every Shenzhen
child, the Montgomery films (no age given) and the Shenzhen adults of the ``test`` rows are held out
(:func:`held_out`), so that ``benchmarks/age_check.py`` can tell whether the check learnt the age or
the hospital.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from pneumolens.checkpoint import save_model
from pneumolens.config import AugmentConfig, resolve_config
from pneumolens.data.augment import random_affine
from pneumolens.data.images import preprocess, read_image
from pneumolens.lungs.age_check import TASK, AgeCheck, age_preprocessing
from pneumolens.lungs.train import (
    adamw_cosine,
    best_epoch_trainer,
    config_from_dict,
    fit_best_epoch,
    random_intensity,
    read_rows,
)
from pneumolens.lungs.train_orientation import architecture_of
from pneumolens.models import create_model


@dataclass(frozen=True)
class AgeCheckConfig:
    image_size: int = 128
    widths: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    augment: AugmentConfig = AugmentConfig(rotation=10.0, shift=0.08, zoom=0.15)
    adult_age: int = 18  # years: a Shenzhen film of this age or more is an adult's
    max_children_flagged: float = 0.01  # the threshold flags at most this share of the validation children
    limit: int = 0  # > 0: at most this many Kaggle films (smoke runs)
    seed: int = 0


class AgeTask(L.LightningModule):
    def __init__(self, config: dict[str, Any], pos_weight: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = config_from_dict(AgeCheckConfig, config, ("widths",))
        arch = architecture_of(self.cfg)
        self.model = create_model(arch["name"], **arch["kwargs"])
        self.pos_weight = torch.tensor(pos_weight)
        self._seen: list[tuple[float, float]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = random_intensity(random_affine(x, self.cfg.augment))  # other framings, exposures, scanners
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.model(x), y, pos_weight=self.pos_weight)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._seen += list(zip((self.model(x) >= 0).float().tolist(), y.tolist(), strict=True))

    def on_validation_epoch_end(self) -> None:
        called, truth = np.array(self._seen).T if self._seen else (np.zeros(0), np.zeros(0))
        right = [np.mean(called[truth == k] == k) for k in (0, 1) if (truth == k).any()]
        self.log("val_balanced_accuracy", float(np.mean(right)) if right else 0.0, prog_bar=True)
        self._seen = []

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, self.cfg)


def film_sets(
    data: str | os.PathLike[str], lung_masks: str | os.PathLike[str], cfg: AgeCheckConfig
) -> dict[str, list[tuple[Path, int]]]:
    """(path, label) by part, ``train`` and ``val``: Kaggle films 0, Shenzhen adults 1."""
    from pneumolens.training.fit import training_split

    split, _ = training_split(data, resolve_config("default", limit=cfg.limit or None))
    root = Path(lung_masks)
    adults = {
        s: [(root / "images" / f"{r.id}.png", 1) for r in read_rows(root) if _adult(r, cfg) and r.split == s]
        for s in ("train", "val")
    }
    return {
        "train": [(Path(s.path), 0) for s in split.train] + adults["train"],
        "val": [(Path(s.path), 0) for s in split.val] + adults["val"],
    }


def held_out(lung_masks: str | os.PathLike[str], cfg: AgeCheckConfig | None = None) -> dict[str, list[Path]]:
    """The NLM films the check never sees in training or validation, by group: the Shenzhen adults of
    the ``test`` rows, the Shenzhen children aged 1-5 and 6-17 (any split), the Montgomery films."""
    cfg = cfg or AgeCheckConfig()
    root = Path(lung_masks)
    rows = read_rows(root)
    groups = {
        "Shenzhen adults, test rows": [r for r in rows if _adult(r, cfg) and r.split == "test"],
        "Shenzhen children aged 1-5": [r for r in rows if r.source == "shenzhen" and r.age is not None and r.age <= 5],
        "Shenzhen children aged 6-17": [
            r for r in rows if r.source == "shenzhen" and r.age is not None and 5 < r.age < cfg.adult_age
        ],
        "Montgomery (no age given)": [r for r in rows if r.source == "montgomery"],
    }
    return {name: [root / "images" / f"{r.id}.png" for r in group] for name, group in groups.items()}


def _adult(row: Any, cfg: AgeCheckConfig) -> bool:
    return row.source == "shenzhen" and row.age is not None and row.age >= cfg.adult_age


def _tensors(films: list[tuple[Path, int]], size: int) -> TensorDataset:
    pre = age_preprocessing(size)
    x = np.stack([preprocess(read_image(p), pre) for p, _ in films])
    y = np.array([label for _, label in films], dtype=np.float32)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def threshold_for(children: np.ndarray, share: float) -> float:
    """The lowest threshold of at least 0.5, on a 1e-4 grid, at which at most ``share`` of the
    ``children``'s probabilities reach it."""
    allowed = math.floor(share * len(children))
    ranked = np.sort(np.asarray(children, float))[::-1]
    if allowed >= len(ranked):
        return 0.5
    return max(0.5, math.floor(ranked[allowed] * 1e4) / 1e4 + 1e-4)


def fit_age_check(
    data: str | os.PathLike[str], lung_masks: str | os.PathLike[str], out: str | os.PathLike[str], cfg: AgeCheckConfig
) -> Path:
    """Train, keep the best epoch by validation balanced accuracy, set the threshold on the validation
    children, write ``out/looks_adult.safetensors`` with its validation figures."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    sets = film_sets(data, lung_masks, cfg)
    train, val = _tensors(sets["train"], cfg.image_size), _tensors(sets["val"], cfg.image_size)
    labels = train.tensors[1]
    module = AgeTask(dataclasses.asdict(cfg), pos_weight=float((labels == 0).sum() / max(1, int((labels == 1).sum()))))
    trainer, ckpt = best_epoch_trainer(
        out, cfg.epochs, "val_balanced_accuracy", log_every_n_steps=10, enable_progress_bar=False
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    model = fit_best_epoch(module, trainer, ckpt, loader, DataLoader(val, batch_size=128))
    with torch.inference_mode():
        p = torch.sigmoid(torch.cat([model(x) for x, _ in DataLoader(val, batch_size=128)])).numpy()
    truth = val.tensors[1].numpy()
    threshold = threshold_for(p[truth == 0], cfg.max_children_flagged)
    meta: dict[str, Any] = {
        "name": "pneumolens-looks-adult",
        "task": TASK,
        "architecture": architecture_of(cfg),
        "preprocessing": dataclasses.asdict(age_preprocessing(cfg.image_size)),
        "threshold": threshold,
        "config": dataclasses.asdict(cfg),
        "training": {
            "films": {
                part: {"children": sum(1 - y for _, y in f), "adults": sum(y for _, y in f)} for part, f in sets.items()
            },
            "best_epoch": int(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["epoch"]),
            "epochs_run": trainer.current_epoch,
            "wall_seconds": round(time.time() - t0, 1),
        },
        "metrics": {
            "val_children_flagged": float(np.mean(p[truth == 0] >= threshold)),
            "val_adults_flagged": float(np.mean(p[truth == 1] >= threshold)),
        },
    }
    path = save_model(out / "looks_adult.safetensors", model, meta)
    AgeCheck.from_file(path)  # it loads through the inference path
    return path
