"""``fit``: from a dataset path and a config to a run directory holding one model file."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from pneumolens.checkpoint import (
    MODEL_FILENAME,
    LoadedModel,
    atomic_write,
    load_model,
    read_header,
    resolve_model_path,
    save_model,
)
from pneumolens.config import CLASS_NAMES, TrainConfig, check_band_rule
from pneumolens.data.cache import cached_images
from pneumolens.data.dataset import XrayDataModule, class_weights, lung_masks_for, patient_weights
from pneumolens.data.sources import check_headers, find_split
from pneumolens.data.split import Split, exclude_from_training, patient_split, read_exclusions, stratified_subset
from pneumolens.evaluation.calibration import (
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
)
from pneumolens.evaluation.metrics import binary_metrics
from pneumolens.evaluation.selective import validation_band
from pneumolens.inference import predict_samples
from pneumolens.models import create_model
from pneumolens.training import group_dro
from pneumolens.training.callbacks import BestCheckpointFrom, EarlyStoppingFrom, weight_average
from pneumolens.training.distill import load_teacher
from pneumolens.training.exposure import exposure_weights, lung_medians
from pneumolens.training.module import Classifier, architecture_of
from pneumolens.training.pretrain import BACKBONE_FILENAME, load_backbone, pretrain
from pneumolens.training.run_dir import HOLDOUT_DIR, make_room
from pneumolens.training.state import AtomicCheckpointIO, TrainingDiverged, TrainingInterrupted
from pneumolens.training.warm_start import is_model_file, load_init

log = logging.getLogger(__name__)


def read_history(logs: Path) -> list[dict[str, float]]:
    """Per-epoch metrics from Lightning's CSV logs: the last logged value of each column per epoch.

    ``logs`` is the run's ``logs/`` folder: the first part and the resumed ones (``logs/resumeN/``)
    are merged in order, a later part overriding an epoch it repeated.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for metrics_csv in [logs / "metrics.csv", *_resumed_parts(logs)]:
        if not metrics_csv.is_file():
            continue
        seen: set[int] = set()
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                e = int(float(row["epoch"]))
                if e not in seen:  # a resumed part starts the epoch afresh
                    by_epoch[e] = {}
                    seen.add(e)
                for k, v in row.items():
                    if v not in ("", None) and k not in ("epoch", "step") and not k.endswith("_step"):
                        by_epoch[e][k.removesuffix("_epoch")] = float(v)
    return [{"epoch": e, **by_epoch[e]} for e in sorted(by_epoch)]


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


class EpochLog(L.Callback):
    """One log line per epoch, for logs where a progress bar would be noise (no terminal)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        keep = ("val_loss", "val_acc", "val_auroc", "train_loss_epoch")
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k in keep}
        log.info("epoch %d: %s", trainer.current_epoch, ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())))


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` becomes ``bf16-mixed`` where the device computes natively in bfloat16 (GPUs from
    Ampere on; CPUs with AVX512-BF16 or AMX, where it nearly doubles convolution throughput), else
    ``32-true``. Any other value is passed to Lightning as given."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return (
        "bf16-mixed"
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else "32-true"
    )


def _resumed_parts(logs: Path) -> list[Path]:
    parts = [p for p in logs.glob("resume*/metrics.csv") if p.parent.name[6:].isdigit()]
    return sorted(parts, key=lambda p: int(p.parent.name[6:]))


def _log_version(logs: Path) -> str:
    n = 1
    while (logs / f"resume{n}").exists():
        n += 1
    return f"resume{n}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True)))


# Fewest optimiser steps per epoch at which the plain weight average (decay 0.99) has been seen to
# follow the model in time: 140 (the default recipe, every run) worked; 70 (batch 64) and 80 (two
# thirds of the films, benchmarks/label_issues.py) kept epoch-0 weights (docs/results.md, rounds 4 and 8).
EMA_MIN_STEPS_PER_EPOCH = 100


def average_may_lag(cfg: TrainConfig, n_train: int) -> str | None:
    """A warning before training when the weight average, without warm-up, may still sit near the
    initial weights when early stopping first looks, or None."""
    ranks = (cfg.devices if isinstance(cfg.devices, int) else 1) * cfg.num_nodes  # each rank steps on its share
    steps = math.ceil(n_train / (cfg.batch_size * ranks))
    if cfg.ema_decay <= 0 or cfg.ema_warmup or cfg.first_watched_epoch > 0 or steps >= EMA_MIN_STEPS_PER_EPOCH:
        return None
    return (
        f"{steps} steps per epoch ({n_train} films, batch {cfg.batch_size}): the weight average (decay "
        f"{cfg.ema_decay}, no warm-up) may lag behind the model for several epochs and early stopping keep "
        "epoch-0 weights; add --ema-warmup (or --start-from-epoch N)"
    )


def unlearned(
    val_metrics: dict[str, Any],
    cfg: TrainConfig,
    min_auc: float = 0.7,
    best_epoch: int | None = None,
    epochs_run: int | None = None,
) -> str | None:
    """Why the finished model should not be used, or None: training can end without learning."""
    if best_epoch == 0 and epochs_run is not None and epochs_run < cfg.epochs:
        return (
            f"early stopping ended training after {epochs_run} of {cfg.epochs} epochs with the best validation loss "
            f"at epoch 0: the kept weights have hardly been trained; retrain with --start-from-epoch {cfg.epochs // 2} "
            f"or a larger --patience (now {cfg.patience})"
            + (" or --ema-warmup (the weight average lags behind the model at first)" if cfg.ema_decay > 0 else "")
        )
    auc = val_metrics.get("roc_auc")
    if auc is None or auc >= min_auc:
        return None
    hint = ""
    if cfg.ema_decay:
        hint = (
            f" (with --ema-decay {cfg.ema_decay} the average may still be close to the initial weights: "
            "lower the decay or train longer)"
        )
    return f"validation ROC-AUC {auc:.3f}: this model does not separate the classes, do not use it{hint}"


def training_split(data: str | os.PathLike[str], cfg: TrainConfig) -> tuple[Split, list[tuple[str, str]]]:
    """``data``'s training images split by patient as ``cfg`` says (``cfg.exclude``'s films left out
    of the training part, which for a refit holds the validation films too), and the unreadable ones
    left out."""
    pool, bad = check_headers(find_split(data, "train"))
    if bad:
        log.warning("skipping %d file(s) that are not readable images, e.g. %s (%s)", len(bad), *bad[0])
    if cfg.limit:
        pool = stratified_subset(pool, cfg.limit, cfg.patient_split_seed)
    split = patient_split(pool, cfg.val_fraction, cfg.patient_split_seed)
    held_out = split.val
    if cfg.refit:  # one pool, so that a listed validation film stays out of the refit too
        split = replace(split, train=split.train + split.val, val=[])
    if cfg.exclude:
        split = exclude_from_training(split, read_exclusions(cfg.exclude), cfg.exclude)
        log.info("left %d listed file(s) out of training (%s)", len(split.excluded), cfg.exclude)
    if cfg.refit:
        split = replace(split, val=held_out)
        log.info("refit: training on all %d films; validation below is on films it trains on", len(split.train))
    return split, bad


def check_learnt_within(
    path: str | os.PathLike[str], role: str, data: str | os.PathLike[str], cfg: TrainConfig
) -> None:
    """The ``role`` model at ``path`` (a run's start or teacher, already checked to share its patient
    split) trained on no film that a run of ``cfg`` on ``data`` does not train on: none it leaves out,
    none of its validation films. Where the two differ in ``exclude`` or ``refit``, the films are
    compared one by one (so a start trained without a list may serve a run that leaves out only
    validation films, e.g. a refit on part of them).

    Raises:
        ValueError: it trained on such a film, or its films cannot be listed (the message names both).
    """
    # its config from the file's header alone: the file was loaded and checked whole a moment before
    theirs = TrainConfig.from_dict(json.loads(read_header(resolve_model_path(path))["meta"])["config"])
    if (theirs.exclude, theirs.refit) == (cfg.exclude, cfg.refit):
        return  # the same split fields: the same training films
    try:
        their_train = training_split(data, theirs)[0].train
    except ValueError as e:
        raise ValueError(f"{path}: cannot list the films the {role} trained on ({e})") from None
    ours = {s.path for s in training_split(data, cfg)[0].train}
    if extra := [s.path for s in their_train if s.path not in ours]:
        raise ValueError(
            f"{path}: the {role} trained on {len(extra)} film(s) that this run does not train on, e.g. {extra[0]} "
            f"(the {role}: exclude={theirs.exclude!r}, refit={theirs.refit}; this run: exclude={cfg.exclude!r}, "
            f"refit={cfg.refit})"
        )


def fit(
    data: str | os.PathLike[str],
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    callbacks: list[L.Callback] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train ``cfg`` on ``data``'s training images and write the run to ``out``.

    With ``cfg.cache``, images are preprocessed once into ``cache_dir`` (default
    :func:`~pneumolens.data.cache.default_cache_dir`) and every epoch reads them from there.
    Extra Lightning ``callbacks`` (e.g. a benchmark's timers) join the built-in ones. With ``resume``,
    training continues from ``out/checkpoints/last.ckpt`` (the end of the last complete epoch), with
    the optimiser, schedule, early-stopping state and random generators it had there.
    With ``cfg.refit``, the run with validation held out is trained first into ``out/holdout`` (its
    twin), then the recipe again on every training film, validation films too; the refit takes the
    twin's temperature and threshold (a resumed refit resumes, or reuses, the twin first).
    A new run into a folder holding an earlier one (a model, or an interrupted run's checkpoints) is
    refused unless ``overwrite``, which removes what the earlier training wrote there first.
    Returns the path of the best model file (``out/model.safetensors``).

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM stopped training; the last complete checkpoint is kept.
        RunExists: ``out`` holds an earlier run, and neither ``resume`` nor ``overwrite`` was given.
    """
    t0 = time.time()
    out = Path(out)
    last_ckpt = out / "checkpoints" / "last.ckpt"
    twin_started = cfg.refit and (out / HOLDOUT_DIR / "checkpoints" / "last.ckpt").is_file()
    if resume and not (last_ckpt.is_file() or twin_started):
        raise FileNotFoundError(f"{out}: nothing to resume, no checkpoints/last.ckpt")
    arch = architecture_of(cfg)
    trial = create_model(arch["name"], **arch["kwargs"])  # a wrong architecture argument fails here, before any data
    if cfg.init:
        load_init(trial, cfg.init, cfg)  # so does a missing or mismatched starting file
    if cfg.ssl_epochs and (str(cfg.devices) != "1" or cfg.num_nodes != 1 or not cfg.cache):
        raise ValueError("--ssl-epochs pretrains on one device from the preprocessing cache: use --devices 1, --cache")
    if cfg.exclude:
        read_exclusions(cfg.exclude)  # an unreadable list fails here, before any data is read
    teacher = load_teacher(cfg) if cfg.teacher else None  # so does an unusable or mismatched teacher
    for role, path in (("start", cfg.init), ("teacher", cfg.teacher)):
        if path and is_model_file(path):  # not a pretrained backbone: those learnt no labels
            check_learnt_within(path, role, data, cfg)  # and one that learnt from films this run leaves out
    # the band is set after training: a bad rule is refused before it
    check_band_rule(cfg.borderline_share, cfg.borderline_risk, either=False, confidence=cfg.borderline_confidence)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    if cfg.sam_rho > 0 and precision.startswith("16"):  # "auto" on a GPU without bf16, before any data
        raise ValueError(f"sam_rho does not work with precision {precision}; add --precision 32-true")
    if not resume:
        # after every check of the config: a refused run removes nothing
        make_room(out, overwrite, inputs=(("--init", cfg.init), ("--teacher", cfg.teacher)))
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        recorded = json.loads((out / "config.json").read_text())
        if not cfg.is_recorded_in(recorded):
            raise ValueError(f"{out}/config.json differs from the config given; resume with the run's own config")
    else:  # written first: a refit's interrupted twin resumes as part of the refit
        _write_json(out / "config.json", cfg.to_dict())
    _write_json(out / "run.json", {"data": str(data)})
    twin = None
    if cfg.refit:
        twin = holdout_twin(data, cfg, out, cache_dir, callbacks, resume)
        resume = resume and last_ckpt.is_file()  # the twin may have been all there was to resume
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # after the trial build: its init draws do not count

    split, bad = training_split(data, cfg)
    train_labels = [s.label for s in split.train]
    weights = class_weights(train_labels, cfg.class_weights)
    counts = {
        part: {name: sum(s.label == i for s in samples) for i, name in enumerate(CLASS_NAMES)}
        for part, samples in (("train", split.train), ("val", split.val))
    }
    log.info("train %s, val %s, class weights %s", counts["train"], counts["val"], weights.tolist())
    _write_json(
        out / "split.json",
        {
            "train": [s.path for s in split.train],
            "val": [s.path for s in split.val],
            "duplicates": split.duplicates,
            "unreadable": [{"path": p, "reason": r} for p, r in bad],
            "excluded": split.excluded,
            "refit": cfg.refit,  # true: the validation films are in ``train`` too
        },
    )

    if lag := average_may_lag(cfg, len(split.train)):
        log.warning("%s", lag)
    module = Classifier(cfg.to_dict(), weights.tolist())
    if teacher is not None:
        module.set_teacher(teacher)
    if cfg.patient_weighting:
        module.film_weights = patient_weights(split.train)
    if cfg.exposure_balance > 0:
        balance = exposure_weights(split.train, lung_medians(split.train, cfg.num_workers), cfg.exposure_balance)
        module.film_weights = {p: module.film_weights.get(p, 1.0) * w for p, w in balance.items()}
        log.info(
            "exposure balance %s: film weights %.2f to %.2f",
            cfg.exposure_balance,
            min(balance.values()),
            max(balance.values()),
        )
    if cfg.group_dro > 0:  # a resumed run takes the weights its checkpoint holds instead
        module.group_weights = group_dro.initial_weights([s.path for s in split.train], [s.label for s in split.train])
    lung_masks, cache = None, None
    if cfg.cache:
        cache = cached_images(split.train + split.val, cfg.preprocess, cache_dir, cfg.num_workers)
        if all(s.path in cache.errors for s in split.train):
            example = next(iter(cache.errors.items()))
            raise ValueError(
                f"none of the {len(split.train)} training images could be read, e.g. {example[0]}: {example[1]}"
            )
    elif cfg.preprocess.lungs != "none":
        t_masks = time.time()
        lung_masks = lung_masks_for(split.train + split.val, cfg.num_workers)
        log.info("lung masks for %d images in %.0f s", len(lung_masks), time.time() - t_masks)
    init_sha256 = load_init(module.model, cfg.init, cfg) if cfg.init else None
    if cfg.ssl_epochs:
        assert cache is not None  # checked above
        backbone = out / "pretrain" / BACKBONE_FILENAME
        if not (resume and backbone.is_file()):  # a resumed run keeps the features it started from
            pretrain(cfg, split.train, cache, split.val, out / "pretrain")
        load_backbone(module.model, backbone, cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # supervised training draws as without it
    datamodule = XrayDataModule(cfg, split.train, split.val, lung_masks, cache)
    start = cfg.first_watched_epoch
    ckpt_cb = BestCheckpointFrom(start, dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min")
    # Lightning's own save_last only follows improvements; this one is written after every epoch.
    last_cb = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1)
    extra: list[L.Callback] = [EpochLog(), *(callbacks or [])]
    if cfg.ema_decay > 0:
        # validation, checkpoints and the shipped weights are the average (batch-norm statistics too)
        extra.append(weight_average(cfg.ema_decay, warmup=cfg.ema_warmup))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=precision,
        deterministic=True,
        logger=CSVLogger(out, name="logs", version=_log_version(out / "logs") if resume else ""),
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ckpt_cb,
            last_cb,
            EarlyStoppingFrom(start, monitor="val_loss", mode="min", patience=cfg.patience),
            LearningRateMonitor(logging_interval="epoch"),
            *extra,
        ],
        log_every_n_steps=max(1, min(10, len(split.train) // cfg.batch_size)),
        num_sanity_val_steps=0,
        enable_progress_bar=sys.stderr.isatty(),
        default_root_dir=out,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=last_ckpt if resume else None, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns SIGINT / SIGTERM into SystemExit
        if not trainer.interrupted:
            raise
        name = "SIGTERM" if trainer.received_sigterm else "SIGINT"
        raise TrainingInterrupted(out, name, last_ckpt if last_ckpt.is_file() else None) from e
    except FloatingPointError as e:  # raised by the training step on a NaN / infinite loss
        kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt.is_file() else "no epoch had completed"
        raise TrainingDiverged(f"{e}; training stopped, {kept} (try a lower --lr)") from None
    # Which images each rank trained on in the first epoch: shows the shards of a distributed run.
    _write_json(out / "shards" / f"rank{trainer.global_rank}.json", sorted(module.first_epoch_paths))
    if not trainer.is_global_zero:
        return out / MODEL_FILENAME

    # Best weights restored (as Keras' restore_best_weights): reload them from the best checkpoint.
    best = ckpt_cb.best_model_path or last_cb.best_model_path
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model = module.model.cpu().eval()

    # Calibration and the threshold are fitted on the files through the inference path (float
    # pixels), not on the cache's 1/255-quantised rows: the operating point is that of deployment.
    logits, _ = predict_samples(model, split.val, cfg.preprocess, num_workers=cfg.num_workers, logits=True)
    val_samples = [s for s in split.val if s.path in logits]
    y = np.array([s.label for s in val_samples])
    z = np.array([logits[s.path] for s in val_samples])
    calibration = operating_point(model, y, z, cfg) if twin is None else carried_operating_point(model, twin)
    val_p = 1 / (1 + np.exp(-z / calibration["temperature"]))
    val_metrics = binary_metrics(y, val_p, calibration["threshold"])
    # the least sure calls: a band on films it did not train on (a refit carries its twin's)
    if twin is None:
        band = validation_band(
            y, val_p, calibration["threshold"], cfg.borderline_share, cfg.borderline_risk, cfg.borderline_confidence
        )
    else:
        band = twin.borderline
    history = read_history(out / "logs")
    watched = [h for h in history if h["epoch"] >= start]
    best_epoch = min(watched, key=lambda h: h.get("val_loss", float("inf")))["epoch"] if watched else None
    if twin is not None:  # figures on films it trained on: kept, but not as validation
        metrics = {"trained_on_val": val_metrics, "holdout_val": twin.meta["metrics"]["val"]}
    else:
        metrics = {"val": val_metrics}
        if problem := unlearned(val_metrics, cfg, best_epoch=best_epoch, epochs_run=trainer.current_epoch):
            log.warning("%s: %s", out, problem)
    meta = {
        "name": f"pneumolens-{cfg.preset}",
        "architecture": architecture_of(cfg),
        "preprocessing": cfg.to_dict()["preprocess"],
        "threshold": calibration["threshold"],
        "calibration": calibration,
        "borderline": band,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "history": history,
        "training": {
            "counts": counts,
            "class_weights": weights.tolist(),
            "epochs_run": trainer.current_epoch,
            "precision": precision,
            "world_size": trainer.world_size,
            "preprocessing_cache_seconds": round(cache.build_seconds, 1) if cache else None,
            "best_epoch": best_epoch,
            "wall_seconds": round(time.time() - t0, 1),
            "duplicate_groups": len(split.duplicates),
            "unreadable_files": len(bad) + len(module.skipped),
        },
    }
    if init_sha256:  # fine-tuned from a trained model: weight averages need a shared start
        meta["training"]["init_sha256"] = init_sha256
    if cfg.preprocess.lungs != "none":
        from pneumolens.lungs.segment import LungSegmenter

        meta["lung_segmenter_sha256"] = LungSegmenter.shipped().sha256
    path = save_model(out / MODEL_FILENAME, model, meta)
    if twin is None:
        _write_json(out / "val_metrics.json", val_metrics)
    return path


def holdout_twin(
    data: str | os.PathLike[str],
    cfg: TrainConfig,
    out: Path,
    cache_dir: str | os.PathLike[str] | None,
    callbacks: list[L.Callback] | None,
    resume: bool,
) -> LoadedModel:
    """The run of ``cfg`` with its validation split held out, in ``out/holdout``: trained (or resumed)
    unless a resumed refit finds it finished. A refit takes its temperature and threshold."""
    twin_cfg = replace(cfg, refit=False)
    twin = out / HOLDOUT_DIR
    if resume and (twin / MODEL_FILENAME).is_file():
        if not twin_cfg.is_recorded_in(json.loads((twin / "config.json").read_text())):
            raise ValueError(f"{twin} was trained with another config than this refit's; refit into a new --out")
        log.info("refit: the held-out run in %s is finished, resuming the refit", twin)
    else:
        try:
            fit(
                data,
                twin_cfg,
                twin,
                cache_dir,
                callbacks,
                resume=resume and (twin / "checkpoints" / "last.ckpt").is_file(),
            )
        except TrainingInterrupted as e:  # resuming the refit resumes the twin first
            raise TrainingInterrupted(out, e.signal_name, e.last) from e
    return load_model(twin / MODEL_FILENAME)


def carried_operating_point(model: torch.nn.Module, twin: LoadedModel) -> dict[str, Any]:
    """The held-out ``twin``'s temperature (folded into ``model``) and threshold: a refit has no films
    of its own left to choose them on."""
    calibration = {k: v for k, v in twin.meta["calibration"].items() if k != "folded_into"}
    if calibration["temperature"] != 1.0:
        calibration["folded_into"] = fold_temperature(model, calibration["temperature"])
    calibration["carried_from"] = {"run": HOLDOUT_DIR, "weights_sha256": twin.sha256}
    return calibration
