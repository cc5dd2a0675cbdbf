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

An empty or absent field passes: many films carry none of these, and the lung checks
(``pneumolens.lungs.flags``: no lung fields found, an unusual lung area) are the guard then. ``*`` in
either variable accepts any value of that field. The values quoted are coded strings (CS, at most 16
characters of A-Z, 0-9, space and underscore), never a patient identifier; anything else in them is
dropped before quoting.
"""

from __future__ import annotations

import os
import re

BODY_PARTS_ENV = "PNEUMOLENS_BODY_PARTS"
VIEWS_ENV = "PNEUMOLENS_VIEWS"
DEFAULT_BODY_PARTS = ("CHEST", "THORAX", "THORACIC", "TORAX", "LUNG")
DEFAULT_VIEWS = ("PA", "AP")
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC"})
_OTHER_VIEW_WORDS = ("lateral", "oblique", "decubitus")


def _terms(env: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    return tuple(t.strip().upper() for t in raw.split(",") if t.strip())


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
    body_parts = _terms(BODY_PARTS_ENV, DEFAULT_BODY_PARTS)
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
