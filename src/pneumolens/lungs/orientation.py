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
a person to check the side marker, which is the right question for both. A third transform, a
digital turn (``turn``), can be learnt the same way; that check is not shipped (``SHIPPED``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.data.images import preprocess

TASK = "orientation"
BATCH = 64  # films per forward pass: a long list's activations are not held all at once
TURN_DEGREES = (5.0, 25.0)  # a digital turn the turn check learns to see: this many degrees, either way


def turn(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (..., H, W) turned about its centre by a random angle of ``TURN_DEGREES``
    either way, the corners filled black, as a film rotated in software and saved is: the black
    wedges, not the tilt, are what lowers the pneumonia model's specificity (README, Reliability)."""
    shape = x.shape
    images = x.reshape(-1, 1, *shape[-2:]).float()
    n, _, h, w = images.shape
    sign = torch.randint(0, 2, (n,)) * 2 - 1
    angle = torch.empty(n).uniform_(*TURN_DEGREES) * sign * math.pi / 180
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)  # a rotation in pixels, written in the grid's [-1, 1] coordinates
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    turned = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return turned.reshape(shape).to(x.dtype)


# what each check learns to see, on (..., H, W) tensors: the film mirrored left to right, inverted, or
# turned digitally (black corners)
TRANSFORMS = {"mirror": lambda x: x.flip(-1), "invert": lambda x: 1 - x, "turn": turn}


SHIPPED = ("mirror", "invert")  # a turn check can be trained, but failed its rule (README, Not done yet)


def shipped_path(transform: str) -> Path:
    if transform not in SHIPPED:
        known = "trained with train-orientation, not shipped" if transform in TRANSFORMS else "unknown transform"
        raise ValueError(f"{known} {transform!r}; shipped checks: {', '.join(SHIPPED)}")
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
    def probabilities(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """P(transformed: mirrored, or inverted) for each grayscale film (H, W) in [0, 1]."""
        if not len(grays):
            return np.zeros(0)
        x = torch.from_numpy(np.stack([preprocess(g, self.loaded.preprocess) for g in grays]))  # (B, 1, S, S)
        z = torch.cat([self.loaded.model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
        return torch.sigmoid(z).numpy().astype(float)

    def find(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """For each film, whether it looks transformed (mirrored, or inverted): at or above the threshold."""
        return self.probabilities(grays) >= self.threshold

    def finds(self, gray: np.ndarray) -> bool:
        """Whether the film looks transformed (mirrored, or inverted): at or above the threshold."""
        return bool(self.find([gray])[0])


@functools.cache
def _shipped(transform: str) -> OrientationCheck:
    path = shipped_path(transform)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped orientation check is missing; retrain it with `make orientation`")
    return OrientationCheck.from_file(path)
