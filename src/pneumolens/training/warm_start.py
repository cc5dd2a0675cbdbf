"""``--init``: where a run's network starts, other than its random initialisation.

Two kinds of file: a pretrained backbone (``RUN/pretrain/backbone.safetensors``: features only, the
last layer starts fresh) or a trained model file or run directory (every weight, the last layer
too, i.e. fine-tuning). A trained model must have been trained on the same patient split as the
run (or it would bring knowledge of the run's validation films into model selection), read the same
input and have the same architecture; its folded temperature is taken back out, so the run starts
from the network as it was trained.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from pneumolens.checkpoint import FORMAT, LoadedModel, load_model, read_header, resolve_model_path
from pneumolens.config import TrainConfig
from pneumolens.evaluation.calibration import unfold_temperature
from pneumolens.training.distill import check_same_films_and_input
from pneumolens.training.module import architecture_of
from pneumolens.training.pretrain import load_backbone


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """A pneumolens model file or a run directory holding one (not a pretrained backbone)."""
    p = Path(path)
    if p.is_dir():
        return True
    try:
        return p.is_file() and read_header(p).get("format") == FORMAT
    except Exception:  # not safetensors at all: the loaders below name the problem
        return False


def starting_model(path: str | os.PathLike[str], cfg: TrainConfig) -> LoadedModel:
    """The trained model ``path`` that a run of ``cfg`` may start from, temperature unfolded.

    Raises:
        ModelFileError: no usable model file there (the message names it).
        ValueError: another split, input or architecture, or a refit or ensemble (the message names the field).
    """
    loaded = load_model(resolve_model_path(path))
    if "config" not in loaded.meta:
        raise ValueError(f"{loaded.path}: records no training config, so the films it learnt from are unknown")
    if TrainConfig.from_dict(loaded.meta["config"]).refit:
        raise ValueError(f"{loaded.path}: a refit, trained on the validation films; start from its held-out twin")
    check_same_films_and_input(loaded, cfg, "start")
    if loaded.meta["architecture"] != architecture_of(cfg):
        raise ValueError(
            f"{loaded.path}: architecture {loaded.meta['architecture']}, this run builds {architecture_of(cfg)}"
        )
    unfold_temperature(loaded.model, loaded.meta.get("calibration", {}))
    return loaded


def load_init(model: nn.Module, path: str | os.PathLike[str], cfg: TrainConfig) -> str | None:
    """Copy ``path``'s weights into ``model``: every weight of a trained model (returns its weights'
    SHA-256), or the features of a pretrained backbone (returns None)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file or run directory (--init takes a trained model or a backbone)")
    if not is_model_file(path):
        load_backbone(model, path, cfg)
        return None
    loaded = starting_model(path, cfg)
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    return loaded.sha256
