"""The model behind the service: one loaded model, one lock, torch or ONNX Runtime for the score."""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolens.checkpoint import load_model
from pneumolens.config import CLASS_NAMES
from pneumolens.data.images import preprocess, read_image
from pneumolens.data.scope import max_training_age, sample_flags
from pneumolens.evaluation.model_card import shipped_test_record
from pneumolens.evaluation.selective import borderline_flags
from pneumolens.explain.explainer import DEFAULT_METHOD
from pneumolens.lungs.flags import describe, flags_and_measures
from pneumolens.lungs.preprocess import read_box
from pneumolens.lungs.segment import LungSegmenter
from pneumolens.selftest import check_at_start
from pneumolens.service.settings import Settings

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings, known_answer: bool = True) -> None:
        """``known_answer``: check the self-test film's answer at start (``selftest`` checks it itself)."""
        self.loaded = load_model(settings.model)
        self.segmenter = LungSegmenter.shipped()
        max_training_age()  # a malformed PNEUMOLENS_MAX_TRAINING_AGE stops the start, not a film later
        self.backend = settings.backend
        self.onnx = None
        if settings.backend == "onnx":
            from pneumolens.export import OnnxModel, export_onnx

            path = settings.onnx_path
            if path is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="pneumolens-onnx-")
                path = str(export_onnx(self.loaded, Path(self._tmp.name) / "model.onnx"))
            self.onnx = OnnxModel(path)
        # One request at a time touches the model: Grad-CAM hooks and LIME batches must not interleave,
        # and two cores gain nothing from running two forward passes at once.
        self.lock = threading.Lock()
        # another answer than recorded: not started (ValueError)
        self.known_answer = check_at_start(self) if known_answer else "not checked"
        log.info(
            "model %s loaded (%s backend; self-test film's answer %s)",
            self.loaded.meta.get("name"),
            self.backend,
            self.known_answer,
        )

    @property
    def info(self) -> dict[str, Any]:
        meta = self.loaded.meta
        return {
            "name": meta.get("name", "unknown"),
            "version": meta.get("versions", {}).get("pneumolens", "unknown"),
            "sha256": self.loaded.sha256,
        }

    def card(self) -> dict[str, Any]:
        meta = self.loaded.meta
        keys = (
            "name",
            "architecture",
            "preprocessing",
            "threshold",
            "calibration",
            "members",  # an ensemble's: each member's name, weights hash, seed and metrics
            "averaged_weights_of",  # a weight average's, the same for the fine-tunes it averages
            "site_calibrations",
            "class_names",
            "versions",
        )
        card = {k: meta[k] for k in keys if k in meta}
        metrics = meta.get("metrics", {})
        card["validation_metrics"] = metrics.get("val")
        if "holdout_val" in metrics:  # a refit trained on its validation films: its held-out twin's figures
            card["holdout_twin_validation_metrics"] = metrics["holdout_val"]
        card["backend"] = self.backend
        card["sha256"] = self.loaded.sha256
        card["known_answer"] = self.known_answer  # the self-test film's, at start: "as recorded" or "not recorded"
        recorded = shipped_test_record(self.loaded.sha256)
        if recorded is not None:
            card["recorded_test_metrics"] = recorded
        return card

    def _probability(self, x: torch.Tensor) -> float:
        if self.onnx is not None:
            z = float(self.onnx.logits(x.numpy())[0])
        else:
            with torch.inference_mode():
                z = float(self.loaded.model(x)[0])
        return float(1.0 / (1.0 + np.exp(-z)))

    def predict(
        self, data: bytes, filename: str, explain: bool, method: str, image: bool = False, age: float | None = None
    ) -> dict[str, Any]:
        """Score (and explain) one upload; with ``image``, ``image_png`` is the image as pneumolens read
        it (for a client that cannot decode the upload: DICOM in a browser); ``age`` (years): the
        patient's age as the client gives it, used instead of a DICOM header's. Raises ImageReadError
        for a file that cannot be used."""
        t0 = time.perf_counter()
        gray = read_image(filename, data=data)
        result = self.analyse(gray, explain, method, sample_flags(data, age))
        result.pop("explanation", None)
        result["image_png"] = preview_png(gray) if image else None
        return {**result, "seconds": time.perf_counter() - t0}

    def analyse(
        self,
        gray: np.ndarray,
        explain: bool,
        method: str = DEFAULT_METHOD,
        from_header: list[str] | None = None,
        heatmap_png: bool = True,
    ) -> dict[str, Any]:
        """Score (and explain) a decoded image. With ``explain``, ``explanation`` holds the
        :class:`~pneumolens.explain.explainer.Explanation` and, unless ``heatmap_png`` is False (a
        caller that builds its own objects from the explanation, as the DICOM node does), ``heatmap_png``
        its picture as a base64 PNG. ``from_header``: the flags its DICOM header gives
        (``pneumolens.data.scope.header_flags``)."""
        t0 = time.perf_counter()
        result: dict[str, Any] = {
            "method": None,
            "lung_fraction": None,
            "heatmap_png": None,
            "regions": [],
            "explanation": None,
        }
        with self.lock:
            # one segmentation serves the flags, lung-aware preprocessing and the explanation
            low, full = self.segmenter.masks(gray) if explain else (self.segmenter.mask(gray, full_size=False), None)
            x = torch.from_numpy(preprocess(gray, self.loaded.preprocess, lung_mask=low))[None]
            p = self._probability(x)
            if explain:
                from pneumolens.explain import explain_image

                assert full is not None  # masks() gives both when explaining
                flags, measures = self._flags(low, gray, p, from_header)  # before the map: its picture names them
                e = explain_image(
                    self.loaded, gray, method, lung_masks=(low, full), model_input=x, probability=p, flags=flags
                )
                if heatmap_png:  # encoding it costs a full-resolution film about 70 ms (PNG_COMPRESSION)
                    buf = io.BytesIO()
                    e.picture.save(buf, format="PNG", compress_level=PNG_COMPRESSION)
                    result["heatmap_png"] = base64.b64encode(buf.getvalue()).decode("ascii")
                result.update(method=method, lung_fraction=e.lung_fraction, regions=e.regions(), explanation=e)
        if not explain:  # outside the lock: another request's model may run meanwhile
            flags, measures = self._flags(low, gray, p, from_header)
        t = self.loaded.threshold
        label = CLASS_NAMES[int(p >= t)]
        return {
            **result,
            "probability": p,
            "label": label,
            "threshold": t,
            "decision": f"{'above' if p >= t else 'below'} the operating point ({t:.3f}): {label}",
            "borderline": [band["low"], band["high"]] if (band := self.loaded.borderline) else None,
            "flags": flags,
            "warning": describe(flags),
            "measures": measures,
            "model": self.info,
            "image_size": [int(gray.shape[1]), int(gray.shape[0])],
            "read_box": _read_box(low, self.loaded.preprocess, gray.shape),
            "seconds": time.perf_counter() - t0,
        }

    def _flags(
        self, low: np.ndarray, gray: np.ndarray, p: float, from_header: list[str] | None
    ) -> tuple[list[str], dict[str, Any]]:
        """A film's flags (its lung and image checks, then its header's, then the call's) and measures."""
        flags, measures = flags_and_measures(low, gray)
        return flags + (from_header or []) + borderline_flags(p, self.loaded.borderline), measures

    @property
    def audit_model(self) -> dict[str, Any]:
        """What the audit trail records of the model."""
        return {**self.info, "preprocessing": self.loaded.meta.get("preprocessing")}


def _read_box(low: np.ndarray, cfg, shape: tuple[int, int]) -> list[int]:
    """[left, top, right, bottom] of what the model read, in image pixels (``lungs.preprocess.read_box``)."""
    top, bottom, left, right = read_box(low, cfg.lungs, cfg.lung_margin, shape)
    return [left, top, right, bottom]


# zlib level 3 instead of PIL's 6: a full-resolution film's picture in 72 instead of 220 ms, 3% larger
PNG_COMPRESSION = 3
PREVIEW_SIDE = 1024  # the longest side of image_png: enough to see the film and the outlines, a few hundred kB


def preview_png(gray: np.ndarray) -> str:
    """``gray`` ((H, W) in [0, 1], as displayed) as a base64 8-bit PNG, its longest side at most
    ``PREVIEW_SIDE`` pixels."""
    from PIL import Image

    picture = Image.fromarray(np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8))
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=PNG_COMPRESSION)
    return base64.b64encode(buf.getvalue()).decode("ascii")
