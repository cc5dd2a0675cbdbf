"""``fit``: from a dataset path and a config to a run directory holding one model file."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from pneumolens.checkpoint import MODEL_FILENAME, atomic_write, save_model
from pneumolens.config import CLASS_NAMES, TrainConfig
from pneumolens.data.dataset import XrayDataModule, class_weights, lung_masks_for
from pneumolens.data.sources import check_headers, find_split
from pneumolens.data.split import patient_split, stratified_subset
from pneumolens.evaluation.calibration import choose_threshold, expected_calibration_error, fit_temperature
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.inference import predict_samples
from pneumolens.training.module import Classifier, architecture_of

log = logging.getLogger(__name__)


def read_history(metrics_csv: Path) -> list[dict[str, float]]:
    """Per-epoch metrics from Lightning's CSV log: the last logged value of each column per epoch."""
    if not metrics_csv.is_file():
        return []
    by_epoch: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            ep = by_epoch.setdefault(int(float(row["epoch"])), {})
            for k, v in row.items():
                if v not in ("", None) and k not in ("epoch", "step") and not k.endswith("_step"):
                    ep[k.removesuffix("_epoch")] = float(v)
    return [{"epoch": e, **by_epoch[e]} for e in sorted(by_epoch)]


def fold_temperature(model: torch.nn.Module, temperature: float) -> str:
    """Divide the final single-logit layer by ``temperature`` (exact: the logit is linear in it).

    The model file then gives calibrated probabilities to every caller with no extra step.
    """
    name, last = next((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, torch.nn.Linear))
    if last.out_features != 1:
        raise ValueError(f"cannot fold a temperature into {name} with {last.out_features} outputs")
    with torch.no_grad():
        last.weight /= temperature
        last.bias /= temperature
    return name


def operating_point(model: torch.nn.Module, y: np.ndarray, logits: np.ndarray, cfg: TrainConfig) -> dict[str, Any]:
    """Calibrate (if configured) and choose the threshold on validation; folds the temperature into ``model``."""
    raw = 1 / (1 + np.exp(-logits))
    result: dict[str, Any] = {"temperature": 1.0, "ece_before": expected_calibration_error(y, raw)}
    if cfg.calibrate:
        t = fit_temperature(y, logits)
        result["temperature"] = t
        result["folded_into"] = fold_temperature(model, t)
    calibrated = 1 / (1 + np.exp(-logits / result["temperature"]))
    result["ece_after"] = expected_calibration_error(y, calibrated)
    result["threshold_policy"] = cfg.threshold_policy
    result["threshold"] = choose_threshold(y, calibrated, cfg.threshold_policy)
    return result


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True)))


def fit(data: str | os.PathLike[str], cfg: TrainConfig, out: str | os.PathLike[str]) -> Path:
    """Train ``cfg`` on ``data``'s training images and write the run to ``out``.

    Returns the path of the best model file (``out/model.safetensors``).
    """
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    pool = find_split(data, "train")
    pool, bad = check_headers(pool)
    if bad:
        log.warning("skipping %d file(s) that are not readable images, e.g. %s (%s)", len(bad), *bad[0])
    if cfg.limit:
        pool = stratified_subset(pool, cfg.limit, cfg.seed)
    split = patient_split(pool, cfg.val_fraction, cfg.seed)
    train_labels = [s.label for s in split.train]
    weights = class_weights(train_labels, cfg.class_weights)
    counts = {
        part: {name: sum(s.label == i for s in samples) for i, name in enumerate(CLASS_NAMES)}
        for part, samples in (("train", split.train), ("val", split.val))
    }
    log.info("train %s, val %s, class weights %s", counts["train"], counts["val"], weights.tolist())
    (out / "config.json").write_text(cfg.to_json())
    _write_json(
        out / "split.json",
        {
            "train": [s.path for s in split.train],
            "val": [s.path for s in split.val],
            "duplicates": split.duplicates,
            "unreadable": [{"path": p, "reason": r} for p, r in bad],
        },
    )

    module = Classifier(cfg.to_dict(), weights.tolist())
    lung_masks = None
    if cfg.preprocess.lungs != "none":
        t_masks = time.time()
        lung_masks = lung_masks_for(split.train + split.val, cfg.num_workers)
        log.info("lung masks for %d images in %.0f s", len(lung_masks), time.time() - t_masks)
    datamodule = XrayDataModule(cfg, split.train, split.val, lung_masks)
    ckpt_cb = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min", save_top_k=1, save_last=True
    )
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        deterministic=True,
        logger=CSVLogger(out, name="logs", version=""),
        callbacks=[
            ckpt_cb,
            EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience),
            LearningRateMonitor(logging_interval="epoch"),
        ],
        log_every_n_steps=max(1, min(10, len(split.train) // cfg.batch_size)),
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return out / MODEL_FILENAME

    # Best weights restored (as Keras' restore_best_weights): reload them from the best checkpoint.
    best = ckpt_cb.best_model_path or ckpt_cb.last_model_path
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model = module.model.cpu().eval()

    logits, _ = predict_samples(model, split.val, cfg.preprocess, num_workers=cfg.num_workers, logits=True)
    val_samples = [s for s in split.val if s.path in logits]
    y = np.array([s.label for s in val_samples])
    z = np.array([logits[s.path] for s in val_samples])
    calibration = operating_point(model, y, z, cfg)
    val_metrics = binary_metrics(y, 1 / (1 + np.exp(-z / calibration["temperature"])), calibration["threshold"])
    history = read_history(out / "logs" / "metrics.csv")
    best_epoch = min(history, key=lambda h: h.get("val_loss", float("inf")))["epoch"] if history else None
    meta = {
        "name": f"pneumolens-{cfg.preset}",
        "architecture": architecture_of(cfg),
        "preprocessing": cfg.to_dict()["preprocess"],
        "threshold": calibration["threshold"],
        "calibration": calibration,
        "config": cfg.to_dict(),
        "metrics": {"val": val_metrics},
        "history": history,
        "training": {
            "counts": counts,
            "class_weights": weights.tolist(),
            "epochs_run": trainer.current_epoch,
            "best_epoch": best_epoch,
            "wall_seconds": round(time.time() - t0, 1),
            "duplicate_groups": len(split.duplicates),
            "unreadable_files": len(bad) + len(module.skipped),
        },
    }
    if cfg.preprocess.lungs != "none":
        from pneumolens.lungs.segment import LungSegmenter

        meta["lung_segmenter_sha256"] = LungSegmenter.shipped().sha256
    path = save_model(out / MODEL_FILENAME, model, meta)
    _write_json(out / "val_metrics.json", val_metrics)
    return path
