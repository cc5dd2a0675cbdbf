"""The Python API: three lines from import to an explained prediction.

import pneumolens
model = pneumolens.load()                                  # the shipped model; load(path) for another
result = model.predict("xray.dcm", explain="gradcam")
result.probability, result.label, result.heatmap, result.flags
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pneumolens.checkpoint import LoadedModel, load_model
from pneumolens.config import CLASS_NAMES
from pneumolens.data.images import ImageReadError, preprocess, read_image
from pneumolens.data.scope import age_flags, dataset_flags, given_age, header_flags, max_training_age
from pneumolens.evaluation.selective import borderline_flags
from pneumolens.lungs.flags import describe, flags_and_measures_of
from pneumolens.lungs.segment import LungSegmenter

BATCH = 64  # films read, checked and scored together by predict
ImageLike = str | os.PathLike | np.ndarray | Any  # path, array, PIL image or pydicom Dataset


@dataclass
class Result:
    """One prediction. ``heatmap`` is at the input's resolution when an explanation was asked for.
    With ``predict(..., errors="return")``, an image that could not be used has ``error`` set and no
    ``probability`` or ``label``."""

    probability: float | None  # of pneumonia (calibrated on validation)
    label: str | None  # at the model's operating point
    threshold: float
    flags: list[str] = field(default_factory=list)
    heatmap: np.ndarray | None = None
    method: str | None = None
    lung_fraction: float | None = None
    measures: dict[str, float | None] = field(default_factory=dict)  # behind the flags: lung_area, lung_median, ...
    regions: list[dict[str, Any]] = field(default_factory=list)  # the map's outlines ([column, row] points, share)
    error: str | None = None  # why the image could not be used (errors="return"); None when it was

    @property
    def warning(self) -> str | None:
        return describe(self.flags)


def _is_dataset(image: object) -> bool:
    return hasattr(image, "PixelData") or hasattr(image, "file_meta")  # a pydicom Dataset


def to_gray(image: ImageLike) -> np.ndarray:
    """Any supported input -> grayscale (H, W) float32 in [0, 1]."""
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, np.ndarray):
        a = np.asarray(image)
        if a.ndim == 3:
            a = a[..., :3].mean(axis=-1)
        if a.ndim != 2:
            raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {image.shape}")
        if a.dtype == np.uint8:
            return a.astype(np.float32) / 255.0
        if a.dtype == np.uint16:
            return a.astype(np.float32) / 65535.0
        a = a.astype(np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError("float arrays must be finite and in [0, 1]")
        return a
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL image
        from pneumolens.data.images import _to_gray_float

        return _to_gray_float(image, "<PIL image>")
    if _is_dataset(image):
        import io

        buf = io.BytesIO()
        image.save_as(buf, enforce_file_format=True)
        return read_image("<DICOM dataset>.dcm", data=buf.getvalue())
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, array, PIL image or pydicom Dataset")


class Model:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.segmenter = LungSegmenter.shipped()
        max_training_age()  # a malformed PNEUMOLENS_MAX_TRAINING_AGE is said at load, not mid-batch

    @property
    def name(self) -> str:
        return self.loaded.meta.get("name", "unknown")

    def __repr__(self) -> str:
        p = self.loaded.preprocess
        return (
            f"Model(name={self.name!r}, sha256={self.loaded.sha256[:16]!r}, threshold={self.loaded.threshold:.3f}, "
            f"input={p.image_size}px, lungs={p.lungs!r})"
        )

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        explain: str | None = None,
        age: Any = None,
        errors: str = "raise",
    ) -> Result | list[Result]:
        """Predict one image or a list (batched). ``explain``: None, "gradcam", "lime" or "occlusion".
        ``age``: the patient's age where the file does not say it (a JPEG, PNG or TIFF), in years or
        as a DICOM age (``030M``), for the ``older_than_training`` caution; one for every image, or a
        list with one per image (None: not known). Given, it is used instead of a DICOM header's.
        Never returned or stored. ``errors``: "raise" (default) stops at the first image that cannot
        be used; "return" gives it a ``Result`` with ``error`` set (the message) and goes on, as the
        command line does for a folder.

        Raises:
            ImageReadError: a file that cannot be used, named in the message (``errors="raise"``).
            ValueError: ``age`` or ``errors`` malformed, an array out of range (``errors="raise"``), or
                a list of another length than ``images``.
            TypeError: an input of no supported kind (``errors="raise"``).
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        many = isinstance(images, list | tuple)
        items = list(images) if many else [images]
        ages = _ages(age, len(items))
        results = []
        for i in range(0, len(items), BATCH):  # a long list of films is never held in memory at once
            results += self._predict(items[i : i + BATCH], ages[i : i + BATCH], explain, errors == "return")
        return results if many else results[0]

    def _predict(
        self, items: list[ImageLike], ages: list[float | None], explain: str | None, returned: bool = False
    ) -> list[Result]:
        """``predict`` for one batch of images; with ``returned``, an image that cannot be read gets a
        Result that says why, in its place, and the others are scored."""
        results: list[Result | None] = [None] * len(items)
        read = []  # (position, image, its pixels)
        for i, x in enumerate(items):
            try:
                read.append((i, x, to_gray(x)))
            except (ImageReadError, ValueError, TypeError) as e:
                if not returned:
                    raise
                results[i] = Result(None, None, self.loaded.threshold, error=str(e))
        if read:
            positions, kept, grays = zip(*read, strict=True)
            scored = self._score(list(kept), list(grays), [ages[i] for i in positions], explain)
            for i, r in zip(positions, scored, strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _score(
        self, items: list[ImageLike], grays: list[np.ndarray], ages: list[float | None], explain: str | None
    ) -> list[Result]:
        """Results of images read (``grays``), their flags from ``items`` (a path's or a dataset's header)."""
        # one segmentation per image serves flags, lung-aware preprocessing and the explanation
        masks = self.segmenter.masks_of(grays, full_size=bool(explain))
        lows = [low for low, _ in masks]
        inputs = [preprocess(g, self.loaded.preprocess, m) for g, m in zip(grays, lows, strict=True)]
        with torch.inference_mode():
            probs = torch.sigmoid(self.loaded.model(torch.from_numpy(np.stack(inputs)))).numpy().astype(float)
        t = self.loaded.threshold
        results = []
        checked = flags_and_measures_of(lows, grays)
        for item, g, (low, full), inp, p, years, (flags, measures) in zip(
            items, grays, masks, inputs, probs, ages, checked, strict=True
        ):
            if years is not None:
                flags += age_flags(years)
            elif isinstance(item, str | os.PathLike):
                flags += header_flags(item)
            elif _is_dataset(item):
                flags += dataset_flags(item)
            flags += borderline_flags(
                float(p), self.loaded.borderline
            )  # last, as everywhere: the film's flags, then the call's
            r = Result(float(p), CLASS_NAMES[int(p >= t)], t, flags, measures=measures)
            if explain:
                from pneumolens.explain import explain_image

                e = explain_image(  # the map of the call made above: no second preprocessing or forward pass
                    self.loaded,
                    g,
                    explain,
                    lung_masks=(low, full),
                    model_input=torch.from_numpy(inp)[None],
                    probability=float(p),
                    flags=flags,
                )
                r.heatmap, r.method, r.lung_fraction, r.regions = e.heatmap, explain, e.lung_fraction, e.regions()
            results.append(r)
        return results


def _ages(age: Any, n: int) -> list[float | None]:
    """One age in years (or None) per image from ``predict``'s ``age``."""
    if isinstance(age, list | tuple):
        if len(age) != n:
            raise ValueError(f"age: {len(age)} ages given for {n} image(s)")
        return [given_age(a) for a in age]
    return [given_age(age)] * n


def load(path: str | os.PathLike[str] | None = None) -> Model:
    """The shipped default model, or the model file / run directory at ``path``."""
    return Model(load_model(path))


__all__ = ["ImageReadError", "Model", "Result", "load"]
