"""Distillation from a trained model ("born-again" networks, Furlanello et al. 2018).

The student learns the labels and, weighted by ``distill_weight``, the teacher's calibrated
probabilities on the same augmented batch. The teacher must have been trained on the same patient
split as the student (or its knowledge of the validation films would leak into model selection),
on no film the student leaves out (compared film by film where their ``exclude`` or ``refit``
differ: :func:`pneumolens.training.fit.check_learnt_within`), and read the same preprocessed input.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.config import TrainConfig

# What decides a run's validation films: a teacher or start must share them exactly.
VALIDATION_FIELDS = ("patient_split_seed", "val_fraction", "limit")
# ... and its training films (an ensemble's members share both; a teacher or start may have left out
# more films than the run does, which is checked film by film).
SPLIT_FIELDS = (*VALIDATION_FIELDS, "exclude")


def load_teacher(cfg: TrainConfig) -> nn.Module:
    """The teacher network of ``cfg.teacher``, frozen and in eval mode.

    Raises:
        ModelFileError: no usable model file there (the message names it).
        ValueError: the teacher was trained on another split or preprocessing (the message names the field).
    """
    assert cfg.teacher is not None
    loaded = load_model(cfg.teacher)
    check_same_films_and_input(loaded, cfg, "teacher")
    teacher = loaded.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_same_films_and_input(loaded: LoadedModel, cfg: TrainConfig, role: str) -> None:
    """``loaded`` (a run's teacher, or its start) was trained on ``cfg``'s patient split (the same
    validation films) and reads its input; raises ValueError naming the file, its ``role`` and the
    field that differs."""
    theirs = TrainConfig.from_dict(loaded.meta["config"])
    for name in VALIDATION_FIELDS:
        if getattr(theirs, name) != getattr(cfg, name):
            raise ValueError(
                f"{loaded.path}: the {role} was trained with {name}={getattr(theirs, name)!r}, this run uses "
                f"{getattr(cfg, name)!r}; another split, so it may have trained on this run's validation films"
            )
    ours, theirs_pre = cfg.to_dict()["preprocess"], dataclasses.asdict(loaded.preprocess)  # older files: defaults
    if differ := {k: (theirs_pre[k], ours[k]) for k in ours if theirs_pre[k] != ours[k]}:
        raise ValueError(f"{loaded.path}: the {role} reads other input, ({role}, this run): {differ}")


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's logits against the teacher's probabilities (mean over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher_logits.float()))
