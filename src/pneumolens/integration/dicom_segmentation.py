"""The map as graded values on the original: a DICOM Segmentation of type FRACTIONAL.

The presentation state (``--gsps``) and the Structured Report (``--sr``) carry the map's outlines;
``pneumolens listen --seg`` also writes, per image, the map itself: one segment whose value at each
pixel of the original is the map's support of the call relative to its peak, 0 to 1 in 255 steps
(the map's parts against the call are 0). Its 0.5 contour is the outline the other two objects
draw. A viewer that reads fractional segmentations of projection images (highdicom, a research
pipeline) shows it as a graded overlay at the original's full resolution, or reads the numbers; OHIF
3.13.2 does not (it reads binary segmentations of cross-sectional images: README, Clinical
integration).

Both codes of the segment are private (``99PNEUMOLENS``): no standard code says "where an AI map
supports its call", and the segment is not where a finding lies. Pixel data are RLE lossless (138
kB for the full-resolution samples' 1.9 megapixels on average, ``benchmarks/node.py``); the node's
forwarding falls back to uncompressed for a destination that does not take RLE.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_DESCRIPTION = "pneumolens AI map (graded) - not a diagnosis"
STEPS = 255  # the fractional values' resolution (Maximum Fractional Value)
# The original's attributes the segmentation reads besides identity, patient and study: its grid.
GRID = ("Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing", "ImageOrientationPatient", "FrameOfReferenceUID")


def support_fraction(heatmap: np.ndarray) -> np.ndarray | None:
    """The map's support of the call relative to its peak, (H, W) in [0, 1]; None when no pixel
    supports the call."""
    positive = np.clip(np.asarray(heatmap, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    return positive / peak if peak > 0 else None


def segmentation(original: Dataset, result: dict[str, Any], series_uid: str) -> Dataset | None:
    """A fractional Segmentation of ``result``'s map (``Engine.analyse(..., explain=True)``) on the
    DICOM image ``original``, in its study and the series ``series_uid``; None when the map supports
    nothing."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from pneumolens.integration.dicom_report import PRIVATE_SCHEME, clean_header, equipment, map_region_code

    fraction = support_fraction(result["explanation"].heatmap)
    if fraction is None:
        return None
    rows, cols = int(original.Rows), int(original.Columns)
    if fraction.shape != (rows, cols):
        raise ValueError(f"the map is {fraction.shape}, the image {rows}x{cols}: not the same grid")
    source = clean_header(original)
    for keyword in GRID:
        if keyword in original:
            source[keyword] = original[keyword]
    # highdicom copies these from the source image: type 2, present even when empty
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
        if keyword not in source or source[keyword].value is None:
            setattr(source, keyword, "")
    model = result["model"]
    method = str(result.get("method", "map"))
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"AI map ({method})"[:64],
        segmented_property_category=hd.sr.CodedConcept("ai-map", PRIVATE_SCHEME, "AI map"),
        segmented_property_type=map_region_code(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=str(model["name"])[:64],
            family=codes.DCM.ArtificialIntelligence,
            version=f"{model['version']} sha256:{str(model['sha256'])[:12]}"[:64],
            source="pneumolens",
            parameters={"map": method},
        ),
    )
    with warnings.catch_warnings():  # highdicom and pydicom quote odd names and IDs in warnings: never log them
        warnings.simplefilter("ignore")
        return hd.seg.Segmentation(
            pixel_measures=_pixel_measures(original),
            source_images=[source],
            pixel_array=fraction[None],  # (1, H, W): one frame, one segment
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[segment],
            series_instance_uid=series_uid,
            series_number=9904,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            **equipment(model),
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=STEPS,
            transfer_syntax_uid=RLELossless,
            series_description=SERIES_DESCRIPTION,
            content_label="PNEUMOLENS_AI",
            content_description="AI map: support of the call; not a diagnosis",
        )


def _pixel_measures(original: Dataset):
    """The original's pixel spacing as the segmentation's Pixel Measures (its grid is the original's),
    from Pixel Spacing, else Imager Pixel Spacing, which a viewer uses for a projection radiograph;
    None without either. highdicom writes none for a radiograph by itself, and a viewer that builds
    a labelmap from the segmentation reads it (OHIF 3.13.2 stopped on its absence)."""
    import highdicom as hd

    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = original.get(keyword)
        try:
            values = [float(v) for v in spacing] if spacing is not None else []
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(v > 0 for v in values):
            return hd.PixelMeasuresSequence(pixel_spacing=values, slice_thickness=None)
    return None


def read_segmentation(ds: Dataset) -> dict[str, Any]:
    """What :func:`segmentation` wrote, read back: the referenced image's SOP Instance UID, the
    segment's ``label``, and ``map`` ((H, W) float in [0, 1])."""
    (series,) = ds.ReferencedSeriesSequence
    (image,) = series.ReferencedInstanceSequence
    (segment,) = ds.SegmentSequence
    steps = float(ds.MaximumFractionalValue)
    pixels = np.asarray(ds.pixel_array, dtype=np.float32).reshape(int(ds.Rows), int(ds.Columns))
    return {"image": image.ReferencedSOPInstanceUID, "label": segment.SegmentLabel, "map": pixels / steps}
