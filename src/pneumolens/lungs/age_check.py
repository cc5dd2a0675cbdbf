"""Does the film look like an adult's? A small network that tells the training children from adults.

The pneumonia model learnt from films of children aged one to five. A DICOM header that gives the
patient's age says so (``older_than_training``, ``pneumolens.data.scope``); a JPEG, PNG or TIFF says
nothing, and an adult's film is read like a toddler's. This check reads the thorax itself: the lung
fields' crop box (the shipped segmenter's mask), equalised with CLAHE so that each hospital's contrast
counts for little, at 128x128. It learnt the Kaggle training children against the Shenzhen adults
(``pneumolens train-age-check``); the Shenzhen children were held out to tell whether it learnt the
age or the hospital (``benchmarks/age_check.py``). It was tried and is not shipped: it flagged 6.9%
of the Kaggle test split's children (README, Not done yet), so no result carries it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.config import PreprocessConfig
from pneumolens.data.images import preprocess

TASK = "age"


def age_preprocessing(image_size: int = 128) -> PreprocessConfig:
    """What the check reads: the lung fields' crop box, CLAHE, ``image_size`` square."""
    return PreprocessConfig(image_size=image_size, lungs="crop", lung_margin=0.05, equalize="clahe")


class AgeCheck:
    def __init__(self, loaded: LoadedModel) -> None:
        if loaded.meta.get("task") != TASK:
            raise ValueError(f"{loaded.path}: not an age check (task {loaded.meta.get('task')!r})")
        self.loaded = loaded
        self.threshold = loaded.threshold

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AgeCheck:
        return cls(load_model(path))

    @torch.inference_mode()
    def probabilities(self, grays: list[np.ndarray], masks: list[np.ndarray | None] | None = None) -> np.ndarray:
        """P(an adult's film) for each grayscale film (H, W) in [0, 1]; ``masks``: the segmenter's
        low-resolution lung masks when already at hand (computed otherwise)."""
        masks = masks or [None] * len(grays)
        pre = self.loaded.preprocess
        x = torch.from_numpy(np.stack([preprocess(g, pre, lung_mask=m) for g, m in zip(grays, masks, strict=True)]))
        return torch.sigmoid(self.loaded.model(x)).numpy().astype(float)
