"""Streaming dataset and the Lightning data module.

Images are decoded on demand by DataLoader workers; nothing holds the whole set in memory. A file
that fails to decode is dropped from its batch and reported, so a bad file never ends an epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pneumolens.config import TrainConfig
from pneumolens.data.cache import CachedDataset, CachedImages
from pneumolens.data.images import ImageReadError, preprocess, read_image
from pneumolens.data.scope import max_training_age, sample_flags
from pneumolens.data.sources import Sample

log = logging.getLogger(__name__)


class XrayDataset(Dataset):
    """(input, label) pairs; a sample that fails to load comes back as ``None`` plus its error.

    With ``with_flags``, each item also carries the lung plausibility flags and the measures behind
    them; the lung mask is then computed once and shared with lung-aware preprocessing.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess_cfg,
        with_flags: bool = False,
        lung_masks: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.cfg = preprocess_cfg
        self.with_flags = with_flags
        if with_flags:
            max_training_age()  # a malformed PNEUMOLENS_MAX_TRAINING_AGE is said now, not mid-epoch
        self.lung_masks = lung_masks or {}  # precomputed low-resolution masks by path (training)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch's items (the DataLoader asks for a batch at once): with ``with_flags``, its films are
        segmented and checked in one forward pass each, which costs a worker a third less per film."""
        items, grays = [], []
        for i in indices:
            s = self.samples[i]
            item: dict[str, Any] = {"image": None, "label": s.label, "path": s.path, "error": None}
            item |= {"flags": [], "measures": {}}
            try:
                grays.append(read_image(s.path))
            except ImageReadError as e:
                item["error"] = e.reason
            items.append(item)
        read = [k for k, item in enumerate(items) if item["error"] is None]
        masks = {k: self.lung_masks.get(items[k]["path"]) for k in read}
        if self.with_flags and read:
            from pneumolens.lungs.flags import flags_and_measures_of
            from pneumolens.lungs.segment import LungSegmenter

            lows = [low for low, _ in LungSegmenter.shipped().masks_of(grays)]
            masks = dict(zip(read, lows, strict=True))
            for k, (flags, measures) in zip(read, flags_and_measures_of(lows, grays), strict=True):
                s = self.samples[indices[k]]
                items[k]["flags"], items[k]["measures"] = flags + sample_flags(s.path, s.age), measures
        for k, gray in zip(read, grays, strict=True):
            items[k]["image"] = torch.from_numpy(preprocess(gray, self.cfg, lung_mask=masks[k]))
        return items


def collate_skipping_bad(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the loadable samples; list the others under ``skipped`` as (path, reason)."""
    good = [it for it in items if it["image"] is not None]
    skipped = [(it["path"], it["error"]) for it in items if it["image"] is None]
    if good:
        images = torch.stack([it["image"] for it in good])  # (B, C, H, W)
    else:
        images = torch.empty(0)
    return {
        "image": images,
        "label": torch.tensor([it["label"] for it in good], dtype=torch.float32),
        "path": [it["path"] for it in good],
        "flags": [it["flags"] for it in good],
        "measures": [it["measures"] for it in good],
        "skipped": skipped,
    }


def class_weights(labels: Sequence[int], scheme: str) -> torch.Tensor:
    """Per-class loss weights (NORMAL, PNEUMONIA).

    ``seed``: each class's share of the training images, swapped between the classes (the seed's
    formula: NORMAL gets the PNEUMONIA share and vice versa). ``balanced``: inverse frequency,
    n / (2 * n_class). ``none``: ones.
    """
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"both classes are needed to weight them, got counts {counts.tolist()}")
    if scheme == "seed":
        share = counts / counts.sum()
        w = share[::-1].copy()
    elif scheme == "balanced":
        w = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    elif scheme == "none":
        w = np.ones(2)
    else:
        raise ValueError(f"unknown class weighting {scheme!r}; valid: seed, balanced, none")
    return torch.tensor(w, dtype=torch.float32)


def patient_weights(samples: Sequence[Sample]) -> dict[str, float]:
    """Per-film loss factors that make every patient of a class count the same.

    A film of a patient with k films of class c gets (n_c / p_c) / k, where n_c and p_c are the
    class's films and patients: each patient's films sum to n_c / p_c, and the class keeps its total
    weight n_c (so the class weights keep their meaning). Pneumonia patients in Kaggle's train/
    have up to 30 films; without this, they count 30 times as much as a patient with one.
    """
    films: dict[tuple[int, str], int] = {}
    for s in samples:
        films[(s.label, s.patient)] = films.get((s.label, s.patient), 0) + 1
    n = {c: sum(k for (label, _), k in films.items() if label == c) for c in (0, 1)}
    p = {c: sum(1 for label, _ in films if label == c) for c in (0, 1)}
    return {s.path: n[s.label] / p[s.label] / films[(s.label, s.patient)] for s in samples}


class _PerFilm(Dataset):
    def __init__(self, samples: Sequence[Sample], fn: Callable[[np.ndarray], Any]) -> None:
        self.samples, self.fn = list(samples), fn

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        path = self.samples[i].path
        try:
            return path, self.fn(read_image(path))
        except ImageReadError:
            return path, None


def per_film(samples: Sequence[Sample], fn: Callable[[np.ndarray], Any], num_workers: int = 2) -> dict[str, Any]:
    """``fn`` of each sample's grayscale image, by path, computed once in parallel (``fn`` must be a
    module-level function); unreadable films and those where ``fn`` gives None are left out."""
    loader = DataLoader(_PerFilm(samples, fn), batch_size=32, num_workers=num_workers, collate_fn=lambda b: b)
    return {path: value for batch in loader for path, value in batch if value is not None}


def _lung_mask(gray: np.ndarray) -> np.ndarray:
    from pneumolens.lungs.segment import LungSegmenter

    return LungSegmenter.shipped().mask(gray, full_size=False)


def lung_masks_for(samples: Sequence[Sample], num_workers: int = 2) -> dict[str, np.ndarray]:
    """Low-resolution lung masks for every readable sample, computed once (in parallel) so that
    lung-aware training does not segment each image again every epoch."""
    return per_film(samples, _lung_mask, num_workers)


class XrayDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: TrainConfig,
        train: Sequence[Sample],
        val: Sequence[Sample],
        lung_masks: dict[str, np.ndarray] | None = None,
        cache: CachedImages | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if cache is not None:  # preprocessed once: reading a row costs microseconds, no workers needed
            self.train_set: Dataset = CachedDataset(train, cache)
            self.val_set: Dataset = CachedDataset(val, cache)
            self.workers = 0
        else:
            self.train_set = XrayDataset(train, cfg.preprocess, lung_masks=lung_masks)
            self.val_set = XrayDataset(val, cfg.preprocess, lung_masks=lung_masks)
            self.workers = cfg.num_workers

    def _loader(self, ds: Dataset, shuffle: bool, sampler=None) -> DataLoader:
        workers = self.workers
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_skipping_bad,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.cfg.balanced_sampler:
            labels = [s.label for s in self.train_set.samples]
            per_class = 1.0 / np.bincount(labels, minlength=2)
            weights = torch.tensor([per_class[y] for y in labels], dtype=torch.double)
            gen = torch.Generator().manual_seed(self.cfg.seed)
            sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=gen)
        return self._loader(self.train_set, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def inference_loader(
    samples: Sequence[Sample], preprocess_cfg, batch_size: int = 64, num_workers: int = 2, with_flags: bool = False
) -> DataLoader:
    return DataLoader(
        XrayDataset(samples, preprocess_cfg, with_flags=with_flags),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skipping_bad,
    )
