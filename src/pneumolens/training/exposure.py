"""Exposure balancing: weight the training films so that how grey their lungs are says nothing of the label.

Pneumonia films of the Kaggle set have greyer lungs than normal ones (a lung median above 0.5 in
about 35% of pneumonia films against 5% of normal ones, docs/results.md round 19), partly from the
disease and partly from how the film was exposed, and every model so far calls about half of the
normal films with grey lungs pneumonia: those films are most of the shipped model's false positives
on test, where they are three times as common as in training. The lung gamma of the preprocessing
maps the lungs' median to one value, and the networks still err on those films.

This module reweights instead. Each training film's lung median (on the file as read, before any
preprocessing) falls in one of ``bins`` equal-count bins of all training films' medians; a film of
class c in bin b gets ``(P(b) / P(b | c)) ** strength``, renormalised to a mean of 1 within its class
(so the class weights keep their meaning). At strength 1 each class has the pooled distribution of
lung medians, and exposure alone no longer predicts the label in the weighted training set; a
normal film with grey lungs then counts several times as much as one with dark lungs. Round 36 of
the log measured it: those films' false positives stay where they were, so it is off in every preset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumolens.data.dataset import per_film
from pneumolens.data.sources import Sample

MAX_FACTOR = 20.0  # a bin with very few films of a class must not hand one film the whole class's weight


def _lung_median(gray: np.ndarray) -> float | None:
    from pneumolens.lungs.preprocess import lung_median
    from pneumolens.lungs.segment import LungSegmenter

    return lung_median(gray, LungSegmenter.shipped().mask(gray, full_size=False))


def lung_medians(samples: Sequence[Sample], num_workers: int = 2) -> dict[str, float]:
    """The lung median of every readable film with a lung mask, by path (read and segmented in parallel)."""
    return per_film(samples, _lung_median, num_workers)


def exposure_weights(
    samples: Sequence[Sample], medians: dict[str, float], strength: float = 1.0, bins: int = 5
) -> dict[str, float]:
    """Per-film loss factors that give each class the pooled distribution of lung medians (at strength 1).

    Films without a median (unreadable, or no lung found) get 1 and take no part in the bins.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"exposure_balance must be in [0, 1], got {strength}")
    known = [s for s in samples if s.path in medians]
    weights = {s.path: 1.0 for s in samples}
    if strength == 0 or not known:
        return weights
    values = np.array([medians[s.path] for s in known])
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    which = np.searchsorted(edges, values, side="right")
    labels, paths = np.array([s.label for s in known]), np.array([s.path for s in known])
    pooled = np.bincount(which, minlength=bins) / len(known)
    for c in np.unique(labels):
        in_class = labels == c
        p_class = np.bincount(which[in_class], minlength=bins) / in_class.sum()
        ratio = np.divide(pooled, p_class, out=np.ones(bins), where=p_class > 0)
        factor = np.minimum(ratio[which[in_class]] ** strength, MAX_FACTOR)
        weights.update(zip(paths[in_class].tolist(), (factor / factor.mean()).tolist(), strict=True))
    return weights
