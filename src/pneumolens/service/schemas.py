"""Response models of the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

NOTICE = "Decision support only: this does not replace a clinician's reading and is not a diagnosis."


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="pneumolens version that trained the model")
    sha256: str = Field(description="SHA-256 of the weights")


class MapRegion(BaseModel):
    points: list[list[float]] = Field(
        description="a closed outline (the first point repeated last) in image pixels, [column, row], the image's "
        "top left corner at [0, 0]"
    )
    share: float = Field(description="share of the map's support (its positive attribution) inside the outline")


class Prediction(BaseModel):
    probability: float = Field(description="probability of pneumonia, calibrated on validation")
    label: str = Field(description="NORMAL or PNEUMONIA at the operating point")
    threshold: float
    decision: str
    borderline: list[float] | None = Field(
        None,
        description="[low, high]: the model's borderline band around its threshold, where its least sure calls lie "
        "(a probability inside it carries the caution borderline); null for a model file without one",
    )
    flags: list[str] = Field(
        description="lung plausibility flags (no_lungs_found, lungs_cut_off, unusual_lung_area), the orientation "
        "flags (inverted, mirrored), the image-quality flags (noisy, low_detail), older_than_training (a DICOM "
        "header or the age field giving the patient an age above five years) and the cautions grey_lungs (a less "
        "reliable pneumonia call) and borderline (a probability among the model's least sure calls); empty when "
        "the image looks like a sharp, quiet chest X-ray the standard way round whose lungs are not grey overall "
        "and the call is not borderline"
    )
    warning: str | None = None
    measures: dict[str, float | None] = Field(
        default_factory=dict,
        description="the film's measures behind the flags: lung_area (share of the image), lung_median (grayscale "
        "in [0, 1] inside the lungs; null without lungs), noise and detail (the image-quality measures)",
    )
    model: ModelInfo
    method: str | None = None
    lung_fraction: float | None = Field(None, description="share of the explanation inside the lung fields")
    heatmap_png: str | None = Field(None, description="base64 PNG of the explanation over the image")
    regions: list[MapRegion] = Field(
        default_factory=list,
        description="up to three outlines of where the map is at least half its peak in support of the call, the "
        "largest share first (the DICOM node's report and presentation state carry the same); empty without a map",
    )
    image_size: list[int] = Field(
        description="[width, height] of the input in pixels: the coordinate system of regions (a DICOM file's "
        "Columns and Rows)"
    )
    read_box: list[int] | None = Field(
        None,
        description="[left, top, right, bottom] in image pixels of the part of the image the model read: the lung "
        "fields' bounding box with the model's margin (it crops to them), or the whole image when no lungs were found",
    )
    image_png: str | None = Field(
        None,
        description="with ?image=true: base64 PNG of the image as pneumolens read it (grayscale, windowed, "
        "MONOCHROME1 inverted; its longer side at most 1,024 px), for a client that cannot decode the upload",
    )
    seconds: float
    input_sha256: str | None = Field(
        None,
        description="SHA-256 of the uploaded file: its audit row's key, and what a review names (POST /api/v1/review)",
    )
    notice: str = NOTICE


class ReviewRequest(BaseModel):
    """A clinician's read of an image or study this server's audit trail holds a prediction for."""

    label: Literal["NORMAL", "PNEUMONIA"] = Field(description="the clinician's read")
    input_sha256: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="the image's SHA-256 (a prediction's input_sha256)"
    )
    study_instance_uid: str | None = Field(
        None, max_length=64, description="or a DICOM study's UID (stored salted and hashed, never as given)"
    )


class Review(BaseModel):
    label: str = Field(description="the read recorded")
    model_call: str = Field(description="the model's call it was paired with (the newest for the image or study)")
    probability: float | None
    agrees: bool
    notice: str = NOTICE


class Error(BaseModel):
    detail: str
