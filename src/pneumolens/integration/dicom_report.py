"""The first read as a DICOM Structured Report, for a PACS, RIS or worklist to read rather than show.

``pneumolens listen --sr`` writes one per image beside the Secondary Capture: a Comprehensive SR
holding a TID 1500 Measurement Report (highdicom builds and checks the template), in the original's
study and a series of its own, with the original as evidence. Its first measurement group, a planar
ROI group (TID 1410) on the part of the original the model read, says:

- region: the part of the film the model read, a closed rectangle on the original (the lung fields'
  bounding box with the model's margin, or the whole image when no lungs were found: the result's
  ``read_box``). A viewer draws it, and draws the group's measurements beside it (OHIF does; it
  stops on a group without coordinates);
- finding: pneumonia (SNOMED CT 233604007), site: lung;
- qualitative evaluation "Pneumonia": Present when the probability is at or above the model's
  operating point, Absent below it (the model's call, which a clinician confirms or rejects);
- measurement "Probability" (DCM 122157, no units), the model's calibrated probability;
- the algorithm (TID 4019): model name, its pneumolens version and weight hash, and the operating
  point as a parameter;
- one qualitative evaluation "Image check" per check flag, and "Caution" for each caution
  (``grey_lungs``, ``borderline``), coded in the private scheme ``99PNEUMOLENS`` with the flag as
  code value and its name in words as meaning.

When the result holds an explanation, up to three planar ROI groups (TID 1410) follow, one per
outline of the map (``explain.outlines.map_outlines``): a closed polyline on the original, the share
of the map's support inside it, the map's method, and the private finding "AI map region" (where the
map supports the call, not where a finding lies).

The report is marked UNVERIFIED and PARTIAL: no person has signed it, and it is a first read that
informs the radiologist, not a diagnosis. The device observer (TID 1004) is pneumolens, with a UID
derived from the model's weight hash, so one model always reports as one device.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pneumolens.integration.dicom_node import PATIENT_AND_STUDY
from pneumolens.lungs.flags import CAUTIONS, check_flags

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SERIES_DESCRIPTION = "pneumolens AI first read (structured) - not a diagnosis"
PRIVATE_SCHEME = "99PNEUMOLENS"  # "99" marks a private coding scheme (PS3.16 8.1)
# The original's header fields the report copies besides its patient and study: its identity.
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
MAP_REGION_MEANING, MAP_SHARE_MEANING = "AI map region", "Share of the map's support"


def _code(value: str, scheme: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def map_region_code():
    """The private code of "where the map supports the call" (not where a finding lies): the SR's
    image regions and the segmentation's segment (``pneumolens.integration.dicom_segmentation``)."""
    return _code("map-region", PRIVATE_SCHEME, MAP_REGION_MEANING)


def _flag_code(flag: str):
    """A flag as a private code, its meaning the name in words ("lungs cut off"): the sentence a
    person reads (``pneumolens.lungs.flags.MESSAGES``) is too long for a code meaning (64 characters)."""
    return _code(flag, PRIVATE_SCHEME, flag.replace("_", " "))


def structured_report(original: Dataset, result: dict[str, Any], series_uid: str) -> Dataset:
    """A Comprehensive SR (TID 1500) of ``result`` (``Engine.analyse``) for the DICOM image ``original``,
    in its study and the series ``series_uid``. Patient and study attributes come from ``original``."""
    import highdicom as hd

    model = result["model"]
    pneumonia = _code("233604007", "SCT", "Pneumonia")
    called = result["probability"] >= result["threshold"]
    algorithm = hd.sr.AlgorithmIdentification(
        name=str(model["name"])[:64],
        version=f"{model['version']} sha256:{str(model['sha256'])[:12]}"[:64],
        parameters=[f"operating point {result['threshold']:.4f}"],
        manufacturer="pneumolens",
    )
    evaluations = [hd.sr.QualitativeEvaluation(pneumonia, codes.SCT.Present if called else codes.SCT.Absent)]
    check = _code("image-check", PRIVATE_SCHEME, "Image check")
    caution = _code("caution", PRIVATE_SCHEME, "Caution")
    flags = list(result.get("flags", []))
    for flag in check_flags(flags):
        evaluations.append(hd.sr.QualitativeEvaluation(check, _flag_code(flag)))
    for flag in (f for f in CAUTIONS if f in flags):
        evaluations.append(hd.sr.QualitativeEvaluation(caution, _flag_code(flag)))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="pneumonia first read"),
        referenced_region=hd.sr.ImageRegion(
            "POLYLINE",
            _rectangle(result.get("read_box") or [0, 0, int(original.Columns), int(original.Rows)]),
            source_image=hd.sr.SourceImageForRegion(original.SOPClassUID, original.SOPInstanceUID),
        ),
        finding_type=pneumonia,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=round(float(result["probability"]), 6),
                unit=codes.UCUM.NoUnits,
            )
        ],
        qualitative_evaluations=evaluations,
    )
    regions = _map_regions(original, result, algorithm) if result.get("explanation") is not None else []
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pneumolens", str(model["sha256"])]),
            name="pneumolens",
            manufacturer_name="pneumolens",
            model_name=str(model["name"])[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_code("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group, *regions],
    )
    with warnings.catch_warnings():  # highdicom and pydicom quote odd names and IDs in warnings: never log them
        warnings.simplefilter("ignore")
        return _document(original, report, series_uid)


def _rectangle(box) -> np.ndarray:
    """[left, top, right, bottom] as a closed polyline of (column, row) points, clockwise from top left."""
    left, top, right, bottom = (float(v) for v in box)
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)


def _map_regions(original: Dataset, result: dict[str, Any], algorithm) -> list:
    """One planar ROI group (TID 1410) per outline of the map (``explain.outlines.map_outlines``):
    the region as a closed polyline on the original, the share of the map's support inside it, and the
    map's method. The finding type is the private "AI map region": where the map supports the call,
    not where a finding lies."""
    import highdicom as hd

    source = hd.sr.SourceImageForRegion(original.SOPClassUID, original.SOPInstanceUID)
    groups = []
    for i, outline in enumerate(result["explanation"].outlines, start=1):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"AI map region {i}"),
                referenced_region=hd.sr.ImageRegion("POLYLINE", outline.points, source_image=source),
                finding_type=map_region_code(),
                method=_code(str(result["method"]), PRIVATE_SCHEME, f"{result['method']} map"),
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=_code("map-share", PRIVATE_SCHEME, MAP_SHARE_MEANING),
                        value=round(outline.share, 4),
                        unit=codes.UCUM.NoUnits,
                    )
                ],
            )
        )
    return groups


def _document(original: Dataset, report, series_uid: str) -> Dataset:
    import highdicom as hd

    from pneumolens import __version__

    return hd.sr.ComprehensiveSR(
        evidence=[clean_header(original)],
        content=report[0],
        series_instance_uid=series_uid,
        series_number=9902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pneumolens",
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        software_versions=__version__,
    )


def equipment(model: dict[str, Any]) -> dict[str, str]:
    """pneumolens as the equipment that made an object (highdicom's keyword arguments): the model's
    name, the package version and the start of the weights' hash as the device's serial number."""
    from pneumolens import __version__

    return {
        "manufacturer": "pneumolens",
        "manufacturer_model_name": str(model["name"])[:64],
        "software_versions": __version__,
        "device_serial_number": str(model["sha256"])[:16],
    }


def clean_header(original: Dataset) -> Dataset:
    """The original's header without its pixels, with the patient and study attributes a modality may
    leave out (or send malformed) present but empty (they are type 2 in the SR), and UIDs made up for
    a missing study or series (the report must name both)."""
    ds = Dataset()
    for keyword in IDENTITY + PATIENT_AND_STUDY:
        value = original.get(keyword)
        if keyword == "SpecificCharacterSet":
            if value:  # the names are decoded text by now: written again as UTF-8, which holds any name
                ds.SpecificCharacterSet = "ISO_IR 192"  # (highdicom refuses e.g. ["", "ISO 2022 IR 87"])
            continue
        setattr(ds, keyword, value if value not in (None, "") and _valid(keyword, value) else None)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid())
    return ds


def _valid(keyword: str, value: Any) -> bool:
    """Whether pydicom accepts ``value`` for the attribute (a malformed date from a modality is left
    out of the report rather than failing it)."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR
    from pydicom.valuerep import validate_value

    try:
        validate_value(dictionary_VR(keyword), value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def read_structured_report(ds: Dataset) -> dict[str, Any]:
    """What :func:`structured_report` wrote, read back from the dataset: ``probability``, ``pneumonia``
    ("Present" or "Absent"), ``flags``, ``algorithm`` (name, version, parameters), ``read_box`` (the
    region the model read, [left, top, right, bottom]), the map's ``regions``, the evidence's SOP
    Instance UIDs, and the verification and completion flags."""
    out: dict[str, Any] = {"probability": None, "pneumonia": None, "flags": [], "algorithm": {}}
    out |= {"read_box": None, "regions": []}
    for item in _walk(ds.ContentSequence):  # the first read's group; the map regions' come whole:
        if item.ValueType == "CONTAINER" and _is_map_region(item):
            out["regions"].append(_region(item))
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "SCOORD":  # the first read's region (the map regions' are not walked)
            points = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2)
            out["read_box"] = [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()]
        elif item.ValueType == "NUM" and name == "Probability":
            out["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE" and name == "Pneumonia":
            out["pneumonia"] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "CODE" and name in ("Image check", "Caution"):
            code = item.ConceptCodeSequence[0]  # a value past 16 characters is a Long Code Value
            out["flags"].append(code.get("CodeValue") or code.LongCodeValue)
        elif item.ValueType == "TEXT" and name in ("Algorithm Name", "Algorithm Version", "Algorithm Parameters"):
            key = name.removeprefix("Algorithm ").lower()
            if key == "parameters":
                out["algorithm"].setdefault(key, []).append(item.TextValue)
            else:
                out["algorithm"].setdefault(key, item.TextValue)
    out["evidence"] = [
        image.ReferencedSOPInstanceUID
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for image in series.ReferencedSOPSequence
    ]
    out["verification"], out["completion"] = ds.VerificationFlag, ds.CompletionFlag
    return out


def _is_map_region(group: Dataset) -> bool:
    return any(
        child.ValueType == "CODE" and child.ConceptCodeSequence[0].CodeMeaning == MAP_REGION_MEANING
        for child in group.get("ContentSequence", [])
    )


def _region(group: Dataset) -> dict[str, Any]:
    """A map region's group: ``points`` ((n, 2) column, row) and ``share``."""
    region: dict[str, Any] = {}
    for child in group.ContentSequence:
        name = child.ConceptNameCodeSequence[0].CodeMeaning
        if child.ValueType == "SCOORD":
            region["points"] = np.asarray(child.GraphicData, dtype=np.float64).reshape(-1, 2)
        elif child.ValueType == "NUM" and name == MAP_SHARE_MEANING:
            region["share"] = float(child.MeasuredValueSequence[0].NumericValue)
    return region


def _walk(items):
    """Every content item, depth first, but not inside a map region's group (its algorithm repeats the
    first read's)."""
    for item in items:
        yield item
        if "ContentSequence" in item and not (item.ValueType == "CONTAINER" and _is_map_region(item)):
            yield from _walk(item.ContentSequence)
