"""Lung masks for any X-ray, at the image's own resolution."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumolens.checkpoint import LoadedModel, load_model, weights_digest
from pneumolens.data.images import preprocess
from pneumolens.lungs.masks import attribution_lung_fraction, keep_largest

BATCH = 32  # films per forward pass of masks_of


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
        logits = self._logits([gray])  # (1, 1, S, S)
        if full_size and logits.shape[-2:] != gray.shape:
            logits = F.interpolate(logits, size=gray.shape, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].numpy()

    @torch.inference_mode()
    def _logits(self, grays: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, 1, S, S) logits at the segmenter's own resolution, in batches of ``BATCH``: one film at a
        time costs twice as much per film on two cores."""
        x = torch.from_numpy(np.stack([preprocess(g, self.loaded.preprocess) for g in grays]))  # (B, 1, S, S)
        return torch.cat([self.loaded.model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])

    def mask(self, gray: np.ndarray, full_size: bool = True) -> np.ndarray:
        """Boolean lung mask: thresholded, the two largest components kept, holes filled."""
        return keep_largest(self.probabilities(gray, full_size) >= self.threshold)

    def masks(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low-resolution mask, mask at the image's resolution) from one forward pass."""
        low, full = self.masks_of([gray], full_size=True)[0]
        assert full is not None
        return low, full

    def masks_of(
        self, grays: Sequence[np.ndarray], full_size: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``masks`` for many films in batches: (low-resolution mask, and with ``full_size`` the mask
        at the film's resolution, else None) for each."""
        if not grays:
            return []
        probs = torch.sigmoid(self._logits(grays))  # (B, 1, S, S)
        out = []
        for gray, prob in zip(grays, probs, strict=True):
            low = keep_largest(prob[0].numpy() >= self.threshold)
            full = None
            if full_size:
                up = F.interpolate(prob[None], size=gray.shape, mode="bilinear", align_corners=False)
                full = keep_largest(up[0, 0].numpy() >= self.threshold)
            out.append((low, full))
        return out


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
