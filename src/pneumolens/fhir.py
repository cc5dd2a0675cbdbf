"""A first read as a FHIR R4 Observation, for an EHR or an interface engine rather than a PACS.

``pneumolens listen --fhir DIR`` writes one per image beside the DICOM objects, and ``POST
/api/v1/observation`` answers an upload with one. The Observation says:

- ``status`` ``preliminary``: nobody has verified it; ``category`` imaging;
- ``code``: pneumonia (SNOMED CT 233604007), with the text "AI first read: pneumonia on a chest
  X-ray (decision support, not a diagnosis)";
- ``valueQuantity``: the model's calibrated probability (UCUM ``1``, unit "probability");
- ``interpretation``: POS or NEG (HL7 v3 ObservationInterpretation), the call at the model's
  operating point, which ``referenceRange`` states (the probability from which the call is POS);
- ``method``: the model's name, version and weight hash; ``device``: pneumolens (a display, no
  Device resource);
- ``note``: the caution and the check flags in words, and that this is not a diagnosis;
- ``derivedFrom``: the DICOM image it read (an ImagingStudy identified by its Study Instance UID,
  the image's SOP Instance UID as the ImagingStudy's own identifier), when the input was DICOM.

No patient is named: ``subject`` is left for the interface engine, which knows the patient from
the study (FHIR allows an Observation without one). Built as a plain dictionary; the tests check it
against the R4B models of ``fhir.resources``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pneumolens.lungs.flags import describe

SNOMED, UCUM = "http://snomed.info/sct", "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"  # the identifier system FHIR's ImagingStudy uses for DICOM UIDs
MEDIA_TYPE = "application/fhir+json"


def observation(result: dict[str, Any], study_uid: str | None = None, image_uid: str | None = None) -> dict[str, Any]:
    """``result`` (``Engine.analyse``: probability, threshold, flags, model) as a FHIR R4 Observation;
    ``study_uid`` and ``image_uid``: the DICOM study and image it read, when it read one."""
    model = result["model"]
    probability, threshold = float(result["probability"]), float(result["threshold"])
    called = probability >= threshold
    flags = list(result.get("flags", []))
    notes = ["AI first read to inform a clinician's reading: decision support, not a diagnosis."]
    if flags:  # the caution and the checks, as every other output words them
        notes.append(f"{describe(flags)} (flags: {', '.join(flags)})")
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": {
            "coding": [{"system": SNOMED, "code": "233604007", "display": "Pneumonia"}],
            "text": "AI first read: pneumonia on a chest X-ray (decision support, not a diagnosis)",
        },
        "effectiveDateTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "valueQuantity": {"value": round(probability, 6), "unit": "probability", "system": UCUM, "code": "1"},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": INTERPRETATION,
                        "code": "POS" if called else "NEG",
                        "display": "Positive" if called else "Negative",
                    }
                ],
                "text": f"{'above' if called else 'below'} the model's operating point ({threshold:.4f})",
            }
        ],
        "referenceRange": [
            {
                "low": {"value": round(threshold, 6), "unit": "probability", "system": UCUM, "code": "1"},
                "text": "the operating point: from this probability on, the model calls pneumonia",
            }
        ],
        "method": {
            "text": f"{model['name']} (pneumolens {model['version']}, weights sha256:{str(model['sha256'])[:12]})"
        },
        "device": {"display": "pneumolens"},
        "note": [{"text": text} for text in notes],
    }
    if study_uid:
        study: dict[str, Any] = {
            "type": "ImagingStudy",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"},
        }
        if image_uid:
            study["display"] = f"image urn:oid:{image_uid}"
        obs["derivedFrom"] = [study]
    return obs
