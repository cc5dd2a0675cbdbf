"""One call from an image to an explained prediction: ``explain_image(model, path, method)``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pneumolens.checkpoint import LoadedModel
from pneumolens.config import CLASS_NAMES
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.scope import header_flags
from pneumolens.evaluation.selective import borderline_flags
from pneumolens.explain import attribution as attr
from pneumolens.explain.outlines import Outline, map_outlines
from pneumolens.lungs.flags import plausibility_flags
from pneumolens.lungs.masks import attribution_lung_fraction
from pneumolens.lungs.preprocess import read_box
from pneumolens.lungs.segment import LungSegmenter
from pneumolens.models.fuse import fused_copy

METHODS = ("gradcam", "lime", "occlusion")
# The map the clinical outputs show when none is asked for: on the shipped model's validation films,
# occlusion's deletion and insertion curves beat Grad-CAM's by far (deletion AUC 0.325 against 0.676,
# a random map 0.659; benchmarks/explain_faithfulness.py), in about a third of a second.
DEFAULT_METHOD = "occlusion"


@dataclass
class Explanation:
    method: str
    probability: float  # of PNEUMONIA
    label: str  # the predicted class, which the map explains
    seconds: float  # wall time of the whole call: decode, lungs, prediction, attribution
    heatmap: np.ndarray  # (H, W) at the input image's resolution, in [-1, 1]; > 0 supports `label`
    model_map: np.ndarray  # (S, S) the same map at the model's input resolution
    model_input: torch.Tensor  # (1, C, S, S) what the model saw
    image: np.ndarray  # (H, W) grayscale input in [0, 1]
    lung_mask: np.ndarray  # (H, W) bool
    lung_fraction: float | None  # share of positive attribution inside the lungs
    flags: list[str] = field(default_factory=list)
    segments: np.ndarray | None = None  # LIME superpixels at model resolution
    segment_weights: np.ndarray | None = None
    path: str | None = None

    @property
    def target_sign(self) -> float:
        return 1.0 if self.label == CLASS_NAMES[1] else -1.0

    @cached_property
    def picture(self) -> Any:
        """The overlay with its caption bar (``explain.render.explanation_image``, a PIL image), drawn
        once for every output that shows it (the API's PNG, the DICOM node's Secondary Capture)."""
        from pneumolens.explain.render import explanation_image

        return explanation_image(self)

    @cached_property
    def outlines(self) -> list[Outline]:
        """The map's strongest regions as outlines on the input image (``explain.outlines.map_outlines``),
        traced once for every output that shows them (API, report, presentation state)."""
        return map_outlines(self.heatmap)

    def regions(self) -> list[dict[str, Any]]:
        """The outlines for JSON: ``points`` ([column, row] pixels, closed) and ``share`` of the map's
        support inside each."""
        return [{"points": np.round(o.points, 1).tolist(), "share": round(o.share, 4)} for o in self.outlines]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method,
            "label": self.label,
            "probability": round(self.probability, 6),
            "seconds": round(self.seconds, 4),
            "lung_fraction": None if self.lung_fraction is None else round(self.lung_fraction, 4),
            "flags": self.flags,
            "regions": self.regions(),
        }


def _to_input_resolution(model_map: np.ndarray, shape: tuple[int, int], box, nearest: bool) -> np.ndarray:
    """Place a model-resolution map back onto the input image (inside the crop box, if any)."""
    top, bottom, left, right = box or (0, shape[0], 0, shape[1])
    t = torch.from_numpy(np.ascontiguousarray(model_map, dtype=np.float32))[None, None]
    mode = "nearest" if nearest else "bilinear"
    up = F.interpolate(t, size=(bottom - top, right - left), mode=mode, **({} if nearest else {"align_corners": False}))
    out = np.zeros(shape, dtype=np.float32)
    out[top:bottom, left:right] = up[0, 0].numpy()
    return out


def explain_image(
    loaded: LoadedModel,
    image: str | os.PathLike[str] | np.ndarray,
    method: str = DEFAULT_METHOD,
    *,
    layer: str | None = None,
    n_samples: int = 1000,
    window: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    segmenter: LungSegmenter | None = None,
    lung_masks: tuple[np.ndarray, np.ndarray] | None = None,
    model_input: torch.Tensor | None = None,
    probability: float | None = None,
    flags: list[str] | None = None,
) -> Explanation:
    """Predict and explain one image (a path, or a grayscale array (H, W) in [0, 1]).

    ``lung_masks`` (low-resolution, full-resolution), from ``LungSegmenter.masks``, saves a caller
    that already segmented the image a second pass; ``model_input`` (the image preprocessed with
    those masks, (1, C, S, S)) and ``probability`` (the model's on it) save a caller that already
    scored it the preprocessing and the forward pass, and make the map explain the call it made;
    ``flags``, the film's flags as the caller gave them with that call (its lung and image checks,
    header and borderline flags), save the checks and put the same flags on the picture.

    Raises:
        ImageReadError: the file cannot be used (the same refusal as predict).
        ValueError: unknown method or layer (the message lists the valid ones).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    path = None if isinstance(image, np.ndarray) else str(image)
    gray = image if isinstance(image, np.ndarray) else read_image(image)
    low, full = lung_masks or (segmenter or LungSegmenter.shipped()).masks(gray)
    cfg = loaded.preprocess
    model = loaded.model.eval()
    # on the model's device: a Predictor may have moved the shared model to the GPU
    if model_input is None:
        model_input = torch.from_numpy(preprocess(gray, cfg, lung_mask=low))[None]  # (1, C, S, S)
    x = model_input.to(next(model.parameters()).device)
    if probability is None:
        with torch.inference_mode():
            probability = float(torch.sigmoid(model(x))[0])
    p = probability
    label = CLASS_NAMES[int(p >= loaded.threshold)]
    sign = 1.0 if label == CLASS_NAMES[1] else -1.0
    segments = weights = None
    if method == "gradcam":
        model_map = attr.gradcam(model, x, sign, layer)
    elif method == "occlusion":  # many forward passes: on a copy with batch norm folded in (models.fuse)
        model_map = attr.occlusion(fused_copy(model), x, sign, window, stride)
    else:
        model_map, segments, weights = attr.lime(fused_copy(model), x, sign, n_samples=n_samples, seed=seed)
    box = read_box(low, cfg.lungs, cfg.lung_margin, gray.shape)  # what the model read: the map goes there
    heatmap = _to_input_resolution(model_map, gray.shape, box, nearest=method == "lime")
    return Explanation(
        method=method,
        probability=p,
        label=label,
        seconds=time.perf_counter() - t0,
        heatmap=heatmap,
        model_map=model_map,
        model_input=x.cpu(),
        image=gray,
        lung_mask=full,
        lung_fraction=attribution_lung_fraction(heatmap, full),
        flags=(
            list(flags)
            if flags is not None
            else plausibility_flags(low, gray) + header_flags(path) + borderline_flags(p, loaded.borderline)
        ),
        segments=segments,
        segment_weights=weights,
        path=path,
    )
