"""Which DICOM films the model is for, judged from the header: frontal chest radiographs.

The model learnt on frontal (PA or AP) chest films. A PACS routing rule that sends the node every CR
and DX image also sends hands, knees and the lateral view of each chest study; each would get a
pneumonia probability that means nothing. A DICOM file whose header says it is something else is
therefore refused before a pixel is read, with the field and its value in the message:

- ``Modality`` other than a radiograph's (CR, DX, DR, RG) or a secondary capture's (OT, SC): a CT
  slice or an ultrasound frame is not a chest film;
- ``Body Part Examined`` naming something else: accepted when one of its words starts with a term of
  ``PNEUMOLENS_BODY_PARTS`` (comma-separated; default ``CHEST,THORAX,THORACIC,TORAX,LUNG``, so
  ``CHEST``, ``CHESTABDOMEN`` and ``PORT CHEST`` pass and ``KNEE`` does not);
- ``View Position`` other than one of ``PNEUMOLENS_VIEWS`` (default ``PA,AP``): a lateral (``LL``,
  ``RL``), oblique or decubitus view; without a View Position, a View Code Sequence whose meaning says
  lateral, oblique or decubitus.

One thing the header says is a caution rather than a refusal: the patient's age (``Patient Age``, or
the birth date against the study's date). The model learnt from films of children aged one to five;
:func:`header_flags` gives ``older_than_training`` for a patient older than five years, and the
result carries it with the lung checks' flags (``pneumolens.lungs.flags``). The age itself is never
returned, logged or stored. A model trained on other films sets the oldest age of its training
patients in ``PNEUMOLENS_MAX_TRAINING_AGE`` (years; ``*``: no age caution).

An empty or absent field passes: many films carry none of these, and the lung checks
(``pneumolens.lungs.flags``: no lung fields found, an unusual lung area) are the guard then. ``*`` in
either variable accepts any value of that field. The values quoted are coded strings (CS, at most 16
characters of A-Z, 0-9, space and underscore), never a patient identifier; anything else in them is
dropped before quoting.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

BODY_PARTS_ENV = "PNEUMOLENS_BODY_PARTS"
VIEWS_ENV = "PNEUMOLENS_VIEWS"
DEFAULT_BODY_PARTS = ("CHEST", "THORAX", "THORACIC", "TORAX", "LUNG")
DEFAULT_VIEWS = ("PA", "AP")
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC"})
_OTHER_VIEW_WORDS = ("lateral", "oblique", "decubitus")
OLDER_THAN_TRAINING = "older_than_training"
# years: the Kaggle set, which every model pneumolens ships or trains by default learnt from, holds films of
# children aged one to five (Kermany et al. 2018); a model trained on other films sets its own bound
MAX_TRAINING_AGE_ENV = "PNEUMOLENS_MAX_TRAINING_AGE"
DEFAULT_MAX_TRAINING_AGE = 5.0
AGE_KEYWORDS = ["PatientAge", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _terms(env: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    return tuple(t.strip().upper() for t in raw.split(",") if t.strip())


def body_part_terms() -> tuple[str, ...]:
    """The Body Part Examined terms read as a chest (``PNEUMOLENS_BODY_PARTS``, else the defaults)."""
    return _terms(BODY_PARTS_ENV, DEFAULT_BODY_PARTS)


def _coded(ds, keyword: str) -> str:
    """A CS value as upper-case text ('' when absent or unreadable), reduced to the characters CS allows."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed value reads as absent; the pixels decide then
        return ""
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):  # several values: all of them
        value = " ".join(str(v) for v in value)
    return re.sub(r"[^A-Z0-9_ ]", "", str(value).upper()).strip()[:64]


def _view_meaning(ds) -> str:
    try:
        codes = ds.get("ViewCodeSequence") or []
        return str(codes[0].get("CodeMeaning", "") or "").lower() if len(codes) else ""
    except Exception:  # noqa: BLE001 - a malformed sequence says nothing about the view
        return ""


def outside_scope(ds) -> str | None:
    """Why the header of ``ds`` says it is not a frontal chest radiograph; None when it does not say so."""
    modality = _coded(ds, "Modality")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"not a radiograph (Modality {modality}); pneumolens reads frontal chest X-rays"
    body_parts = body_part_terms()
    body_part = _coded(ds, "BodyPartExamined")
    words = re.split(r"[^A-Z0-9]+", body_part)
    if body_part and "*" not in body_parts and not any(w.startswith(t) for w in words if w for t in body_parts):
        return (
            f"not a chest film (Body Part Examined {body_part}); pneumolens reads frontal chest X-rays "
            f"(a site whose chest films say otherwise adds the term to {BODY_PARTS_ENV})"
        )
    views = _terms(VIEWS_ENV, DEFAULT_VIEWS)
    if "*" in views:
        return None
    view = _coded(ds, "ViewPosition")
    if view and view not in views:
        return (
            f"not a frontal view (View Position {view}); pneumolens reads {' or '.join(views)} chest films "
            f"(set {VIEWS_ENV} to read others)"
        )
    meaning = _view_meaning(ds) if not view else ""
    if any(word in meaning for word in _OTHER_VIEW_WORDS):
        said = next(word for word in _OTHER_VIEW_WORDS if word in meaning)
        return (
            f"not a frontal view (View Code Sequence says {said}); pneumolens reads {' or '.join(views)} chest films "
            f"(set {VIEWS_ENV}=* to read others)"
        )
    return None


def parse_age(text: str) -> float | None:
    """An age as a manifest gives it: years (``7``, ``2.5``) or a DICOM age string (``007Y``, ``030M``,
    ``010W``, ``003D``); None when ``text`` is empty.

    Raises:
        ValueError: anything else (the caller names the file, row and column).
    """
    text = text.strip().upper()
    if not text:
        return None
    if match := re.fullmatch(r"(\d{1,3})([DWMY])", text):
        return int(match[1]) * _AGE_UNITS[match[2]]
    if (years := _years(text)) is None:
        raise ValueError(f"age {text!r}: give years (7, 2.5) or a DICOM age (007Y, 030M)")
    return years


def _years(text: str) -> float | None:
    """``text`` as a plausible number of years (0 to 150), else None."""
    try:
        years = float(text)
    except ValueError:
        return None
    return years if 0 <= years < 150 else None


def age_flags(years: float | None) -> list[str]:
    """``older_than_training`` for a patient of ``years`` older than the training patients; [] when the
    age is unknown or the bound is off (``PNEUMOLENS_MAX_TRAINING_AGE=*``)."""
    oldest = max_training_age()
    # older than five: the sixth birthday passed (an age of 5Y or 71M is still five)
    return [OLDER_THAN_TRAINING] if years is not None and oldest is not None and years >= oldest + 1 else []


def _date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if re.fullmatch(r"\d{8}", text) else None
    except ValueError:  # 20230231: not a day
        return None


def age_in_years(ds) -> float | None:
    """The patient's age at the study from a DICOM header: ``Patient Age`` (``007Y``, ``018M``,
    ``010W``, ``003D``), else the birth date against the study's (or series', acquisition's, content's)
    date; None when the header does not say or says it malformed."""
    try:
        given = str(ds.get("PatientAge", "") or "").strip().upper()
        if match := re.fullmatch(r"(\d{1,3})([DWMY])", given):  # a DICOM age string, nothing else
            return parse_age(match[0])
        born = _date(str(ds.get("PatientBirthDate", "") or "").strip())
        taken = next((d for k in AGE_KEYWORDS[2:] if (d := _date(str(ds.get(k, "") or "").strip())) is not None), None)
    except Exception:  # noqa: BLE001 - a malformed value reads as absent
        return None
    if born is None or taken is None or taken < born:
        return None
    return (taken - born).days / 365.25


def sample_flags(source: str | os.PathLike[str] | bytes | None, age: float | None) -> list[str]:
    """The age caution of a film: from the ``age`` its caller gives (a manifest's column, ``predict
    --age``, the server's ``age``) when given, else its DICOM header (a path or the file's bytes)."""
    return age_flags(age) if age is not None else header_flags(source)


def given_age(value: float | int | str | None) -> float | None:
    """An age a caller gives (years as a number or text, or a DICOM age such as ``030M``) in years;
    None for None or empty text.

    Raises:
        ValueError: anything else, without the value (an age above 89 identifies a patient).
    """
    if value is None:
        return None
    if isinstance(value, bool):  # True is an int to Python, never an age
        raise ValueError("age: give years (7, 2.5) or a DICOM age (007Y, 030M)")
    if isinstance(value, int | float):
        if not 0 <= value < 150:
            raise ValueError("age: give years from 0 to 150, or a DICOM age (007Y, 030M)")
        return float(value)
    try:
        return parse_age(str(value))
    except ValueError:
        raise ValueError("age: give years (7, 2.5) or a DICOM age (007Y, 030M)") from None


def dataset_flags(ds) -> list[str]:
    """The cautions a parsed DICOM header (a pydicom Dataset) gives: ``older_than_training``."""
    return age_flags(age_in_years(ds))


def header_flags(source: str | os.PathLike[str] | bytes | None) -> list[str]:
    """:func:`dataset_flags` of a DICOM file, from its path or bytes, read without the pixels; [] for
    other files, a header that does not parse or one that does not say.

    Raises:
        ValueError: ``PNEUMOLENS_MAX_TRAINING_AGE`` malformed (see :func:`max_training_age`).
    """
    from pneumolens.data.dicom import header_dataset, is_dicom

    if source is None:
        return []
    if isinstance(source, bytes):
        ds = header_dataset(source, AGE_KEYWORDS)
    else:
        try:
            with open(source, "rb") as f:
                if not is_dicom(f.read(132), Path(source).name):
                    return []
        except OSError:
            return []
        import pydicom

        try:
            ds = pydicom.dcmread(source, stop_before_pixels=True, force=True, specific_tags=AGE_KEYWORDS)
        except Exception:  # noqa: BLE001 - a corrupt header: the image's own error is reported when it is read
            return []
    return [] if ds is None else dataset_flags(ds)


def max_training_age() -> float | None:
    """The oldest training patients' age in years (``PNEUMOLENS_MAX_TRAINING_AGE``, default 5: the Kaggle
    set's); None when the variable is ``*`` (no age caution: a model trained on patients of every age).

    Raises:
        ValueError: a value that is neither a number of years nor ``*``, naming the variable.
    """
    raw = os.environ.get(MAX_TRAINING_AGE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_TRAINING_AGE
    if raw == "*":
        return None
    if (years := _years(raw)) is None:
        raise ValueError(f"{MAX_TRAINING_AGE_ENV}={raw!r}: give the oldest training patients' age in years, or *")
    return years
