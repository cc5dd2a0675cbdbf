"""Predictions from a model file: ``Predictor.from_checkpoint(path).predict_paths(paths)``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.config import CLASS_NAMES, PreprocessConfig
from pneumolens.data.dataset import inference_loader
from pneumolens.data.sources import Sample
from pneumolens.evaluation.selective import borderline_flags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    probability: float | None  # of PNEUMONIA; None when the file could not be read
    label: str | None
    error: str | None = None
    flags: list[str] = field(default_factory=list)  # lung plausibility and the grey-lungs caution (lungs.flags)
    measures: dict[str, float | None] = field(default_factory=dict)  # behind the flags (lungs.flags_and_measures)

    @property
    def warning(self) -> str | None:
        from pneumolens.lungs.flags import describe

        return describe(self.flags)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "probability": self.probability, "label": self.label}
        if self.error:
            d["error"] = self.error
        else:
            d["flags"] = self.flags
            d["measures"] = self.measures
            if self.warning:
                d["warning"] = self.warning
        return d


def default_workers(n_samples: int, batch_size: int = 64) -> int:
    """Decoding workers for a folder: every core (up to 8) for large jobs, none for a few files."""
    return min(8, os.cpu_count() or 1) if n_samples > 4 * batch_size else 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def scored_batches(
    model: nn.Module,
    samples: Sequence[Sample],
    cfg: PreprocessConfig,
    batch_size: int = 64,
    num_workers: int = 0,
    with_flags: bool = False,
    logits: bool = False,
    progress: bool = False,
) -> Iterator[tuple[dict[str, float], dict[str, str], dict[str, list[str]], dict[str, dict]]]:
    """For each loader batch, in the samples' order (``batch_size`` samples a batch, the last
    fewer): probabilities (or raw logits) by path of its readable samples, the reasons for its
    unreadable ones, and with ``with_flags`` each readable film's flags and the measures behind them."""
    model.eval()
    device = next(model.parameters()).device
    loader = inference_loader(samples, cfg, batch_size, num_workers, with_flags=with_flags)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="predict", unit="batch", file=sys.stderr)
    for batch in loader:
        probs: dict[str, float] = {}
        flags: dict[str, list[str]] = {}
        measures: dict[str, dict] = {}
        if batch["image"].numel():
            x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            z = model(x).float()
            p = (z if logits else torch.sigmoid(z)).cpu().numpy()
            probs.update(zip(batch["path"], p.astype(float).tolist(), strict=True))
            if with_flags:
                flags.update(zip(batch["path"], batch["flags"], strict=True))
                measures.update(zip(batch["path"], batch["measures"], strict=True))
        yield probs, dict(batch["skipped"]), flags, measures


def predict_samples(
    model: nn.Module,
    samples: Sequence[Sample],
    cfg: PreprocessConfig,
    batch_size: int = 64,
    num_workers: int = 0,
    flags: dict[str, list[str]] | None = None,
    logits: bool = False,
    measures: dict[str, dict] | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, str]]:
    """Probabilities (or raw logits) by path for every readable sample, and the reasons for the
    unreadable ones. Pass a dict as ``flags`` to have it filled with each image's lung plausibility flags,
    and one as ``measures`` (with ``flags``) for the measures behind them.
    """
    probs: dict[str, float] = {}
    errors: dict[str, str] = {}
    batches = scored_batches(model, samples, cfg, batch_size, num_workers, flags is not None, logits, progress)
    for batch_probs, batch_errors, batch_flags, batch_measures in batches:
        probs.update(batch_probs)
        errors.update(batch_errors)
        if flags is not None:
            flags.update(batch_flags)
            if measures is not None:
                measures.update(batch_measures)
    return probs, errors


class Predictor:
    """A loaded model plus its own preprocessing and operating point."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device | None = None) -> None:
        """``device``: where the model runs (default: the GPU when there is one, else the CPU)."""
        self.loaded = loaded
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type != "cpu":
            loaded.model.to(self.device)
        recorded = loaded.meta.get("lung_segmenter_sha256")
        if recorded:
            from pneumolens.lungs.segment import LungSegmenter

            if LungSegmenter.shipped().sha256 != recorded:
                log.warning(
                    "%s was trained with another lung segmenter than the one installed; "
                    "its lung-aware preprocessing may differ from training",
                    loaded.path,
                )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None) -> Predictor:
        return cls(load_model(path))

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    def label_of(self, probability: float) -> str:
        return CLASS_NAMES[int(probability >= self.threshold)]

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        batch_size: int = 64,
        progress: bool = False,
        age: float | None = None,
    ) -> list[Prediction]:
        """Predict files; ``age`` (years): the patients' age where the files do not say it, for the
        ``older_than_training`` caution (used instead of a DICOM header's)."""
        return list(self.iter_paths(paths, batch_size, progress, age))

    def iter_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        batch_size: int = 64,
        progress: bool = False,
        age: float | None = None,
    ) -> Iterator[Prediction]:
        """``predict_paths`` one batch at a time, in the files' order: a long job's results can be
        written as they come, so that a stop loses only the batch in hand."""
        samples = [Sample(str(p), 0, Path(p).name, age=age) for p in paths]
        workers = default_workers(len(samples), batch_size)
        batches = scored_batches(
            self.loaded.model, samples, self.loaded.preprocess, batch_size, workers, with_flags=True, progress=progress
        )
        for start, (probs, errors, flags, measures) in zip(range(0, len(samples), batch_size), batches, strict=True):
            for s in samples[start : start + batch_size]:
                if s.path in probs:
                    p = probs[s.path]
                    said = flags[s.path] + borderline_flags(p, self.loaded.borderline)
                    yield Prediction(s.path, p, self.label_of(p), flags=said, measures=measures[s.path])
                else:
                    yield Prediction(s.path, None, None, errors.get(s.path, "not processed"))

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed inputs (B, C, H, W) in [0, 1]."""
        with torch.inference_mode():
            x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            return torch.sigmoid(self.loaded.model(x)).float().cpu().numpy()
