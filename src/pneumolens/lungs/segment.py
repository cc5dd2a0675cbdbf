"""Lung masks for any X-ray, at the image's own resolution."""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumolens.checkpoint import LoadedModel, load_model, weights_digest
from pneumolens.data.images import preprocess
from pneumolens.lungs.masks import attribution_lung_fraction, keep_largest


def shipped_path() -> Path:
    """The segmenter that ships inside the package."""
    return Path(str(resources.files("pneumolens") / "assets" / "lungs.safetensors"))


class LungSegmenter:
    def __init__(self, loaded: LoadedModel) -> None:
        if loaded.meta.get("task") != "lung-segmentation":
            raise ValueError(f"{loaded.path}: not a lung segmentation model (task {loaded.meta.get('task')!r})")
        self.loaded = loaded
        self.threshold = loaded.threshold

    @property
    def sha256(self) -> str:
        """Hash of the weights: models trained with lung-aware preprocessing record it."""
        return weights_digest(self.loaded.model.state_dict())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LungSegmenter:
        return cls(load_model(path))

    @classmethod
    def shipped(cls) -> LungSegmenter:
        return _shipped()

    @torch.inference_mode()
    def probabilities(self, gray: np.ndarray, full_size: bool = True) -> np.ndarray:
        """Per-pixel lung probability for a grayscale image (H, W) in [0, 1]: at (H, W), or at the
        segmenter's own square resolution when ``full_size`` is False."""
        x = torch.from_numpy(preprocess(gray, self.loaded.preprocess))[None]  # (1, 1, S, S)
        logits = self.loaded.model(x)
        if full_size and logits.shape[-2:] != gray.shape:
            logits = F.interpolate(logits, size=gray.shape, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].numpy()

    def mask(self, gray: np.ndarray, full_size: bool = True) -> np.ndarray:
        """Boolean lung mask: thresholded, the two largest components kept, holes filled."""
        return keep_largest(self.probabilities(gray, full_size) >= self.threshold)

    def masks(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low-resolution mask, mask at the image's resolution) from one forward pass."""
        prob = self.probabilities(gray, full_size=False)
        full = F.interpolate(torch.from_numpy(prob)[None, None], size=gray.shape, mode="bilinear", align_corners=False)
        return keep_largest(prob >= self.threshold), keep_largest(full[0, 0].numpy() >= self.threshold)


@functools.cache
def _shipped() -> LungSegmenter:
    path = shipped_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped lung segmenter is missing; retrain it with `make lungs`")
    return LungSegmenter.from_file(path)


def attribution_in_lungs(
    attribution: np.ndarray, gray: np.ndarray, segmenter: LungSegmenter | None = None
) -> float | None:
    """Share of an explanation's positive attribution that falls inside the lung fields of ``gray``.

    ``attribution`` may have any resolution; it is compared with a lung mask of the same shape.
    None when the map has no positive attribution.
    """
    seg = segmenter or LungSegmenter.shipped()
    low = seg.probabilities(gray, full_size=False)
    prob = F.interpolate(
        torch.from_numpy(low)[None, None], size=attribution.shape, mode="bilinear", align_corners=False
    )
    return attribution_lung_fraction(attribution, keep_largest(prob[0, 0].numpy() >= seg.threshold))
