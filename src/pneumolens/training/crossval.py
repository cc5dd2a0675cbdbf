"""Out-of-fold predictions by patient: every film scored by a model that never saw its patient.

The films are cut into ``k`` folds (stratified, no patient in two folds, byte-identical files kept
together: :func:`~pneumolens.data.split.patient_folds`); a recipe is trained on all folds but one,
in a run of its own (``out/fold{i}``, with its own inner patient-held-out validation for early
stopping, the operating point and calibration), and scores the held-out fold. Used to compare
recipes on all training films instead of one validation split (``benchmarks/recipe_cv.py``) and to
find doubtful labels (``benchmarks/label_issues.py``).

Fold runs that already hold a model are reused (with their held-out scores, ``held_out.json``, while
the weights and films match), an interrupted one resumes from its last complete epoch, and a run
trained with another config is refused, so a study can be stopped and continued.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumolens.config import TrainConfig
from pneumolens.data.sources import Sample, write_manifest
from pneumolens.data.split import patient_folds

if TYPE_CHECKING:
    from pneumolens.checkpoint import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class OutOfFold:
    """Per-film out-of-fold scores, in the order of the samples given (unreadable films left out)."""

    paths: list[str]
    labels: np.ndarray  # (N,) int, 1 = PNEUMONIA
    probs: np.ndarray  # (N,) P(pneumonia) from the model that did not train on the film's fold
    folds: np.ndarray  # (N,) the fold that scored each film
    patients: list[str]
    runs: list[Path]  # fold i's run directory
    train_seconds: list[float]  # fold i's training wall time, as its run recorded it
    unreadable: dict[str, str]  # path -> reason


def fold_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as a fold model trains it: the weight average warmed up, since a fold holds a fraction
    of the films and an epoch fewer steps (docs/results.md, round 4's batch-64 trap)."""
    return dataclasses.replace(cfg, ema_warmup=True) if cfg.ema_decay else cfg


def _check_recipe(run: Path, cfg: TrainConfig) -> None:
    """Refuse a fold folder that holds a run (finished or not) of another config."""
    recorded = run / "config.json"
    if recorded.is_file() and not cfg.is_recorded_in(json.loads(recorded.read_text())):
        raise ValueError(f"{run}: holds a run of another recipe (config.json differs); use another --out or remove it")


def _train_fold(manifest: Path, cfg: TrainConfig, run: Path) -> None:
    from pneumolens.training.fit import fit  # Lightning: imported only when a fold trains

    resume = (run / "checkpoints" / "last.ckpt").is_file()
    if resume:
        log.info("%s: resuming from its last complete epoch", run)
    fit(manifest, cfg, run, resume=resume)


def _held_out_scores(loaded: LoadedModel, held: list[Sample], saved: Path, num_workers: int) -> tuple[dict, dict]:
    """The fold model's scores of its held-out films, kept beside it (``held_out.json``) and reused
    while the weights and the films are the same."""
    from pneumolens.checkpoint import atomic_write
    from pneumolens.inference import predict_samples

    paths = [s.path for s in held]
    if saved.is_file():
        try:
            kept = json.loads(saved.read_text())
            if kept["weights_sha256"] == loaded.sha256 and kept["paths"] == paths:
                return kept["probs"], kept["unreadable"]
        except (OSError, ValueError, KeyError):
            pass  # damaged or foreign: score again and overwrite
    probs, errors = predict_samples(loaded.model, held, loaded.preprocess, num_workers=num_workers)
    text = json.dumps({"weights_sha256": loaded.sha256, "paths": paths, "probs": probs, "unreadable": errors})
    atomic_write(saved, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return probs, errors


def out_of_fold(
    samples: list[Sample],
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    k: int = 3,
    seed: int = 42,
    num_workers: int = 0,
) -> OutOfFold:
    """Train ``cfg`` (as :func:`fold_config` adapts it) ``k`` times, each without one patient fold,
    and score each held-out fold; ``seed`` draws the folds (the same seed, the same folds)."""
    from pneumolens.checkpoint import load_model

    out = Path(out)
    fcfg = fold_config(cfg)
    probs: dict[str, float] = {}
    fold_of: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    runs, seconds = [], []
    for i, held in enumerate(patient_folds(samples, k, seed)):
        held_set = set(held.tolist())
        run = out / f"fold{i}"
        runs.append(run)
        _check_recipe(run, fcfg)
        if not (run / "model.safetensors").is_file():
            manifest = run / "manifest.csv"
            write_manifest(manifest, [s for j, s in enumerate(samples) if j not in held_set])
            _train_fold(manifest, fcfg, run)
        loaded = load_model(run)
        seconds.append(float(loaded.meta.get("training", {}).get("wall_seconds", float("nan"))))
        p, errors = _held_out_scores(loaded, [samples[j] for j in held], run / "held_out.json", num_workers)
        probs.update(p)
        unreadable.update(errors)
        fold_of.update({path: i for path in p})
    kept = [s for s in samples if s.path in probs]
    return OutOfFold(
        paths=[s.path for s in kept],
        labels=np.array([s.label for s in kept], dtype=np.int64),
        probs=np.array([probs[s.path] for s in kept]),
        folds=np.array([fold_of[s.path] for s in kept], dtype=np.int64),
        patients=[s.patient for s in kept],
        runs=runs,
        train_seconds=seconds,
        unreadable=unreadable,
    )


def paired_auc_difference(
    y: np.ndarray,
    p_ref: np.ndarray,
    p_new: np.ndarray,
    groups: list[str],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """ROC-AUC of ``p_new`` minus that of ``p_ref`` on the same films, and its percentile bootstrap
    interval resampling whole patients (``groups``), since a patient's films are not independent.
    The interval covers the data's sampling noise, not the training's: compare with a second seed
    of the reference to see that."""
    from sklearn.metrics import roc_auc_score

    from pneumolens.evaluation.calibration import draw_groups, patient_groups

    y, p_ref, p_new = np.asarray(y), np.asarray(p_ref, float), np.asarray(p_new, float)
    members = patient_groups(groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = draw_groups(members, rng)
        if 0 < y[i].sum() < i.size:
            diffs.append(roc_auc_score(y[i], p_new[i]) - roc_auc_score(y[i], p_ref[i]))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    point = float(roc_auc_score(y, p_new) - roc_auc_score(y, p_ref))
    return point, [float(np.quantile(diffs, lo)), float(np.quantile(diffs, hi))]
