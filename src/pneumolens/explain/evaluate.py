"""``pneumolens explain --evaluate``: faithfulness, time and anatomy of each method over a test set."""

from __future__ import annotations

import logging
import os
import statistics
from typing import Any

import numpy as np

from pneumolens.checkpoint import LoadedModel
from pneumolens.data.images import ImageReadError
from pneumolens.data.sources import find_split
from pneumolens.data.split import stratified_subset
from pneumolens.explain.explainer import METHODS, explain_image
from pneumolens.explain.faithfulness import deletion_insertion

log = logging.getLogger(__name__)


def film_curves(
    loaded: LoadedModel,
    paths: list[str],
    variants: dict[str, tuple[str, dict[str, Any]]],
    seed: int = 0,
    rng: np.random.Generator | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per film, for each variant (name: (method, ``explain_image`` options)) and for a random map on
    the same input (``"random"``, drawn from ``rng``, by default seeded with ``seed``): deletion and
    insertion AUC (``del``, ``ins``), seconds (``sec``) and lung fraction (``lung``, where known). A
    film that cannot be read is skipped (logged) for every variant."""
    rng = rng or np.random.default_rng(seed)
    rows: dict[str, dict[str, list[float]]] = {v: {"del": [], "ins": [], "sec": [], "lung": []} for v in variants}
    rows["random"] = {"del": [], "ins": [], "sec": [], "lung": []}
    for path in paths:
        for name, (method, options) in variants.items():
            try:
                e = explain_image(loaded, path, method, seed=seed, **options)
            except ImageReadError as err:
                log.warning("skipped %s", err)
                break
            c = deletion_insertion(loaded.model, e.model_input, e.model_map, e.target_sign)
            r = rows[name]
            r["del"].append(c.deletion_auc)
            r["ins"].append(c.insertion_auc)
            r["sec"].append(e.seconds)
            if e.lung_fraction is not None:
                r["lung"].append(e.lung_fraction)
        else:
            rand = rng.random(e.model_map.shape)
            c = deletion_insertion(loaded.model, e.model_input, rand, e.target_sign)
            rows["random"]["del"].append(c.deletion_auc)
            rows["random"]["ins"].append(c.insertion_auc)
    return rows


def evaluate_methods(
    loaded: LoadedModel,
    data: str | os.PathLike[str],
    n: int = 20,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Mean deletion / insertion AUC, seconds per image and lung fraction for each method, on ``n``
    test images (stratified). A random map on the same images is the reference row."""
    samples = stratified_subset(find_split(data, "test"), n, seed)
    rows = film_curves(loaded, [s.path for s in samples], {m: (m, options) for m in methods}, seed)

    def mean(v: list[float]) -> float | None:
        return float(np.mean(v)) if v else None

    return {
        m: {
            "n": len(r["del"]),
            "deletion_auc": mean(r["del"]),
            "insertion_auc": mean(r["ins"]),
            "seconds_median": statistics.median(r["sec"]) if r["sec"] else None,
            "lung_fraction": mean(r["lung"]),
        }
        for m, r in rows.items()
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = ["method      n   deletion AUC (lower=better)  insertion AUC (higher=better)  s/image  lung fraction"]
    for m, r in results.items():
        lines.append(
            f"{m:<10} {r['n']:>3}   {f(r['deletion_auc'], '.4f'):>26}  {f(r['insertion_auc'], '.4f'):>29}"
            f"  {f(r['seconds_median'], '.3f'):>7}  {f(r['lung_fraction'], '.3f'):>13}"
        )
    return "\n".join(lines)
