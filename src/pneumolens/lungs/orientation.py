"""Is the film mirrored left to right, or inverted? Two small networks that only know which way
round, and which way up in brightness, a chest film is.

The pneumonia model reads films the standard way: the patient's right on the image's left (the heart
on the image's right), air dark and bone bright. A mirrored export, a film hung the wrong way round,
or an inverted one (a MONOCHROME1 film exported without its inversion) keeps the lung mask plausible
enough for the other flags, yet the model calls most mirrored normal films pneumonia and ranks
inverted films no better than chance (``benchmarks/robustness.py``). Each check is trained without
labels from anyone (each film shown as stored or transformed, the network told which;
``pneumolens train-orientation``), on the training part of the Kaggle films and the NLM adult
films, so it knows children and adults.

A film with dextrocardia (the heart on the right) looks mirrored too, and is flagged: the flag asks
a person to check the side marker, which is the right question for both.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.data.images import preprocess

TASK = "orientation"
# what each check learns to see, on (..., H, W) tensors: the film mirrored left to right, or inverted
TRANSFORMS = {"mirror": lambda x: x.flip(-1), "invert": lambda x: 1 - x}


def shipped_path(transform: str) -> Path:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
    return Path(str(resources.files("pneumolens") / "assets" / f"{transform}ed.safetensors"))


class OrientationCheck:
    def __init__(self, loaded: LoadedModel) -> None:
        if loaded.meta.get("task") != TASK:
            raise ValueError(f"{loaded.path}: not an orientation model (task {loaded.meta.get('task')!r})")
        self.loaded = loaded
        self.threshold = loaded.threshold
        self.transform = loaded.meta["transform"]  # "mirror" or "invert": what it flags

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> OrientationCheck:
        return cls(load_model(path))

    @classmethod
    def shipped(cls, transform: str) -> OrientationCheck:
        return _shipped(transform)

    @torch.inference_mode()
    def probabilities(self, grays: list[np.ndarray]) -> np.ndarray:
        """P(transformed: mirrored, or inverted) for each grayscale film (H, W) in [0, 1]."""
        x = torch.from_numpy(np.stack([preprocess(g, self.loaded.preprocess) for g in grays]))  # (B, 1, S, S)
        return torch.sigmoid(self.loaded.model(x)).numpy().astype(float)

    def finds(self, gray: np.ndarray) -> bool:
        """Whether the film looks transformed (mirrored, or inverted): at or above the threshold."""
        return bool(self.probabilities([gray])[0] >= self.threshold)


@functools.cache
def _shipped(transform: str) -> OrientationCheck:
    path = shipped_path(transform)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped orientation check is missing; retrain it with `make orientation`")
    return OrientationCheck.from_file(path)
