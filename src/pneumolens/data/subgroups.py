"""Subgroups of films within a class: where a model can be right on average and wrong on a part.

A film's subgroup is ``CLASS/group``. The group comes from a CSV manifest's ``group`` column (a
scanner, a site, an age band: whatever the user wants to see separately), from a DICOM attribute
of the device or acquisition (``evaluate --group-by Manufacturer``; never a patient's), the
patient's age band from a DICOM header (``--group-by age-band``: a band, never the age), or the
film's lung exposure (``--group-by lung-exposure``), else from the Kaggle file names: normal films
of the ``IM-*`` and the ``NORMAL2-IM-*`` series (two acquisition series with different error
rates), bacterial and viral pneumonia (``personN_bacteria_M``, ``personN_virus_M``); a name that
says nothing is ``unnamed``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path, PurePath

from pneumolens.config import CLASS_NAMES
from pneumolens.data.dicom import is_dicom
from pneumolens.data.sources import Sample
from pneumolens.lungs.flags import GREY_LUNGS

# DICOM attributes of the device and the acquisition that ``evaluate --group-by`` may split by.
# Nothing that identifies a patient (name, ID, birth date, accession number...) is on the list.
DEVICE_ATTRIBUTES = (
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "DetectorType",
    "PhotometricInterpretation",
)

# Computed from the image, not read from a header: is the film's lung median (the median pixel inside
# the lung mask, grayscale in [0, 1]) above GREY_LUNGS? Greyer lungs than most pneumonia films: the
# shipped model's false alarms concentrate there (docs/results.md, round 19).
LUNG_EXPOSURE = "lung-exposure"

# From a DICOM header's age (``pneumolens.data.scope.age_in_years``), in bands wide enough that a band
# names no one: the training children (one to five), infants, older children, adults, the elderly.
AGE_BAND = "age-band"
AGE_BANDS = ((1, "under 1 year"), (6, "1-5 years"), (18, "6-17 years"), (65, "18-64 years"))

# The Kaggle subgroups, in a fixed order (group DRO keeps one weight per entry).
KAGGLE_SUBGROUPS = (
    "NORMAL/IM",
    "NORMAL/NORMAL2",
    "NORMAL/unnamed",
    "PNEUMONIA/bacteria",
    "PNEUMONIA/virus",
    "PNEUMONIA/unnamed",
)


def kaggle_subgroup(path: str, label: int) -> str:
    """``CLASS/group`` of a film from its Kaggle file name."""
    name = PurePath(path).name.lower()
    if label:
        group = "bacteria" if "_bacteria_" in name else "virus" if "_virus_" in name else "unnamed"
    else:
        group = "NORMAL2" if name.startswith("normal2-im-") else "IM" if name.startswith("im-") else "unnamed"
    return f"{CLASS_NAMES[label]}/{group}"


def subgroup(path: str, label: int, group: str = "") -> str:
    """``CLASS/group``: the given group (a manifest's column, a DICOM attribute) if any, else the
    Kaggle name's."""
    return f"{CLASS_NAMES[label]}/{group}" if group else kaggle_subgroup(path, label)


def _header(path: str | os.PathLike[str], keywords: list[str], force: bool = False):
    """A file's DICOM header (only ``keywords``), or the group of a file without one: "not DICOM" for
    another format, "unreadable" when the header does not parse."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if not is_dicom(head, str(path)):
            return "not DICOM"
        import pydicom

        return pydicom.dcmread(path, stop_before_pixels=True, force=force, specific_tags=keywords)
    except Exception:  # the scorer reports the file's own error; here it only needs a group
        return "unreadable"


def dicom_attribute(path: str | os.PathLike[str], keyword: str) -> str:
    """The value of a DICOM attribute of a file as a group name: "no KEYWORD" when the file lacks
    it, "not DICOM" for another format, "unreadable" when the header does not parse."""
    ds = _header(path, [keyword])
    if isinstance(ds, str):
        return ds
    value = str(getattr(ds, keyword, "") or "").strip()
    return value or f"no {keyword}"


def lung_exposure(path: str | os.PathLike[str]) -> str:
    """Whether a film's lungs look grey overall: its median inside the shipped segmenter's lung mask
    above ``GREY_LUNGS`` or not; "no lungs found" or "unreadable" otherwise."""
    from pneumolens.data.images import read_image
    from pneumolens.lungs.preprocess import lung_median
    from pneumolens.lungs.segment import LungSegmenter

    try:
        gray = read_image(path)
    except Exception:  # the scorer reports the file's own error; here it only needs a group
        return "unreadable"
    median = lung_median(gray, LungSegmenter.shipped().mask(gray))
    if median is None:
        return "no lungs found"
    return f"lung median above {GREY_LUNGS}" if median > GREY_LUNGS else f"lung median {GREY_LUNGS} or below"


def band_of(years: float) -> str:
    """The band (``AGE_BANDS``, or "65 years or more") of an age in years."""
    return next((band for below, band in AGE_BANDS if years < below), "65 years or more")


def age_band(path: str | os.PathLike[str], age: float | None = None) -> str:
    """The patient's age band: from ``age`` (a manifest's) when given, else from a DICOM file's header;
    "no age" when the header does not say, "not DICOM" for another format, "unreadable" when it does
    not parse."""
    from pneumolens.data.scope import AGE_KEYWORDS, age_in_years

    if age is not None:
        return band_of(age)
    ds = _header(path, AGE_KEYWORDS, force=True)
    if isinstance(ds, str):
        return ds
    age = age_in_years(ds)
    return "no age" if age is None else band_of(age)


def grouped_by(samples: Sequence[Sample], keyword: str) -> list[Sample]:
    """``samples`` with their group set to a DICOM device or acquisition attribute, to the patient's
    age band (``age-band``) or to their lung exposure (``lung-exposure``)."""
    if keyword == LUNG_EXPOSURE:
        return [dataclasses.replace(s, group=lung_exposure(s.path)) for s in samples]
    if keyword == AGE_BAND:
        return [dataclasses.replace(s, group=age_band(s.path, s.age)) for s in samples]
    if keyword not in DEVICE_ATTRIBUTES:
        raise ValueError(
            f"--group-by {keyword}: not a device or acquisition attribute pneumolens groups by (patient "
            f"attributes never are, but for the age band); valid: {LUNG_EXPOSURE}, {AGE_BAND}, "
            f"{', '.join(DEVICE_ATTRIBUTES)}"
        )
    return [dataclasses.replace(s, group=dicom_attribute(Path(s.path), keyword)) for s in samples]
