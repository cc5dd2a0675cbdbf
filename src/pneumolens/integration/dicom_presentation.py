"""The map as a switchable overlay on the original image: a Grayscale Softcopy Presentation State.

The Secondary Capture (``pneumolens.integration.dicom_node``) burns the map into a copy of the X-ray; a viewer
shows it as another image. ``pneumolens listen --gsps`` also writes, per image, a **GSPS** that
references the original: opened with it, a PACS viewer draws on the radiologist's own image, at its
full resolution and with its own window, and the overlay can be switched off.

- layer ``AI MAP``: the outlines of the map's strongest regions (``explain.outlines.map_outlines``: where it is
  at least half its peak in support of the call, at most three, largest share of the support
  first), as closed polylines in image pixels;
- layer ``AI CALL``: one line of text at the top left, the Secondary Capture's caption: the
  probability, which side of the operating point it falls, the flags, "not a diagnosis".

The display follows the original: its window (or, without one, the stretch of the stored range that
pneumolens reads it with) and, for MONOCHROME1 images, an inverse presentation LUT, so the image
looks as it does without the overlay. The same outlines go into the Structured Report (``--sr``) as
image regions (``pneumolens.integration.dicom_report``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SERIES_DESCRIPTION = "pneumolens AI first read (overlay) - not a diagnosis"
MAP_LAYER, CALL_LAYER = "AI MAP", "AI CALL"
# The original's attributes the presentation state reads: identity, size and how its pixels are shown.
DISPLAY = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)


def presentation_state(original: Dataset, result: dict[str, Any], series_uid: str, caption: str) -> Dataset:
    """A GSPS for the DICOM image ``original`` (with its pixels' attributes) drawing ``result``'s map
    (``Engine.analyse(..., explain=True)``) and ``caption``, in its study and the series
    ``series_uid``."""
    import highdicom as hd

    from pneumolens.integration.dicom_report import clean_header, equipment

    reference = clean_header(original)  # identity, patient and study, malformed values left out
    for keyword in DISPLAY:
        if keyword in original and keyword not in reference:
            reference[keyword] = original[keyword]
    outlines = result["explanation"].outlines
    map_layer = hd.pr.GraphicLayer(
        MAP_LAYER, order=1, description=f"{result['method']} map: regions supporting the call"
    )
    call_layer = hd.pr.GraphicLayer(CALL_LAYER, order=2, description="the AI first read; not a diagnosis")
    shapes = [hd.pr.GraphicObject("POLYLINE", o.points, units="PIXEL") for o in outlines]
    rows, cols = int(original.Rows), int(original.Columns)
    box = (0.02 * cols, 0.02 * rows, 0.98 * cols, 0.12 * rows)  # a band across the top: left, top, right, bottom
    text = hd.pr.TextObject(caption[:1024], units="PIXEL", bounding_box=box, text_justification="LEFT")
    annotations = [hd.pr.GraphicAnnotation([reference], call_layer, text_objects=[text])]
    if shapes:
        annotations.insert(0, hd.pr.GraphicAnnotation([reference], map_layer, graphic_objects=shapes))
    inverse = str(original.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    shape = hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
    with warnings.catch_warnings():  # highdicom and pydicom quote odd names and IDs in warnings: never log them
        warnings.simplefilter("ignore")
        return hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[reference],
            series_instance_uid=series_uid,
            series_number=9903,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            **equipment(result["model"]),
            content_label="PNEUMOLENS_AI",
            content_description="AI first read: map outline and call; not a diagnosis",
            graphic_annotations=annotations,
            graphic_layers=[map_layer, call_layer],
            voi_lut_transformations=None if _windowed(original) else [_stretch(original)],
            presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
            series_description=SERIES_DESCRIPTION,
        )


def _windowed(ds: Dataset) -> bool:
    return "WindowCenter" in ds or "VOILUTSequence" in ds


def _stretch(ds: Dataset):
    """The window pneumolens reads an image without one through (``data.dicom.stretch``)."""
    import highdicom as hd
    from pydicom.pixels import apply_modality_lut

    from pneumolens.data.dicom import stretch

    lo, hi = stretch(ds, np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64))
    return hd.pr.SoftcopyVOILUTTransformation(
        window_center=(lo + hi) / 2, window_width=max(hi - lo, 1.0), window_explanation="pneumolens stretch"
    )


def read_presentation_state(ds: Dataset) -> dict[str, Any]:
    """What :func:`presentation_state` wrote, read back: the referenced image's SOP Instance UID,
    ``outlines`` (each an (n, 2) array), ``texts``, ``layers``, the window (centre, width) and the
    presentation LUT shape."""
    (series,) = ds.ReferencedSeriesSequence
    (image,) = series.ReferencedImageSequence
    out: dict[str, Any] = {"image": image.ReferencedSOPInstanceUID, "outlines": [], "texts": [], "window": None}
    out["layers"] = [layer.GraphicLayer for layer in ds.GraphicLayerSequence]
    for annotation in ds.get("GraphicAnnotationSequence", []):
        for shape in annotation.get("GraphicObjectSequence", []):
            out["outlines"].append(np.asarray(shape.GraphicData, dtype=np.float64).reshape(-1, 2))
        out["texts"] += [text.UnformattedTextValue for text in annotation.get("TextObjectSequence", [])]
    if "SoftcopyVOILUTSequence" in ds and "WindowCenter" in ds.SoftcopyVOILUTSequence[0]:
        voi = ds.SoftcopyVOILUTSequence[0]
        out["window"] = (float(voi.WindowCenter), float(voi.WindowWidth))
    out["presentation_lut"] = ds.PresentationLUTShape
    return out
