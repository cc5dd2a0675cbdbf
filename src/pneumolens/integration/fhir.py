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
  the image's SOP Instance UID as the ImagingStudy's own identifier), when the input was DICOM;
- ``basedOn``: the RIS's order (a ServiceRequest identified by its placer order number, type
  ``PLAC``, else its filler number, ``FILL``), when ``pneumolens orders`` received it.

No patient is named: ``subject`` is left for the interface engine, which knows the patient from
the study (FHIR allows an Observation without one). Built as a plain dictionary; the tests check it
against the R4B models of ``fhir.resources``.

``transaction`` wraps the Observation with a DiagnosticReport that cites it (``preliminary``,
category RAD, LOINC 18748-4 "Diagnostic imaging study", the call as its ``conclusion``, SNOMED
pneumonia as ``conclusionCode`` when the call is pneumonia, the ImagingStudy when there is one) in
a transaction Bundle, what ``listen --fhir-url`` posts to a FHIR server (``pneumolens.integration.fhir_outbox``)
and ``?format=fhir-bundle`` answers. Both resources carry an identifier derived from the image (its
SOP Instance UID, else the upload's SHA-256) and the model's weight hash, and each entry is a
conditional create on it (``ifNoneExist``): a bundle sent again after a lost answer creates nothing
twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pneumolens.lungs.flags import describe

if TYPE_CHECKING:
    from pneumolens.integration.hl7_orders import Order

SNOMED, UCUM = "http://snomed.info/sct", "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"  # the identifier system FHIR's ImagingStudy uses for DICOM UIDs
MEDIA_TYPE = "application/fhir+json"
LOINC, V2_SECTION = "http://loinc.org", "http://terminology.hl7.org/CodeSystem/v2-0074"
URI = "urn:ietf:rfc:3986"  # identifier system of a URN value (here urn:uuid:...)
V2_IDENTIFIER = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types: PLAC, FILL
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pneumolens/pneumolens/fhir")


def observation(
    result: dict[str, Any], study_uid: str | None = None, image_uid: str | None = None, order: Order | None = None
) -> dict[str, Any]:
    """``result`` (``Engine.analyse``: probability, threshold, flags, model) as a FHIR R4 Observation;
    ``study_uid`` and ``image_uid``: the DICOM study and image it read, when it read one; ``order``:
    the RIS's order it answers, when one came (``pneumolens.integration.hl7_orders``)."""
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
        obs["derivedFrom"] = [_study(study_uid, image_uid)]
    if order is not None and (request := _order(order)):
        obs["basedOn"] = [request]
    return obs


def _order(order: Order) -> dict[str, Any] | None:
    """A logical reference to the RIS's order (FHIR's ServiceRequest), by the number the RIS gave it."""
    for kind, code, display in (("placer", "PLAC", "Placer Identifier"), ("filler", "FILL", "Filler Identifier")):
        if value := order.identifier(kind):
            number = {"type": {"coding": [{"system": V2_IDENTIFIER, "code": code, "display": display}]}, "value": value}
            return {"type": "ServiceRequest", "identifier": number}
    return None


def _study(study_uid: str, image_uid: str | None) -> dict[str, Any]:
    """A logical reference to the DICOM study (FHIR's ImagingStudy identifier), naming the image read."""
    identifier = {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}
    study: dict[str, Any] = {"type": "ImagingStudy", "identifier": identifier}
    if image_uid:
        study["display"] = f"image urn:oid:{image_uid}"
    return study


def resource_id(kind: str, image_key: str, model_sha256: str) -> str:
    """``urn:uuid:...``, the same for the same image read by the same weights: the identifier that makes
    a bundle sent twice create nothing twice."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{kind}|{image_key}|{model_sha256}')}"


def diagnostic_report(
    result: dict[str, Any],
    observation_ref: str,
    study_uid: str | None = None,
    image_uid: str | None = None,
    order: Order | None = None,
) -> dict[str, Any]:
    """The report that carries the Observation at ``observation_ref``: the call in words as its
    conclusion, coded as pneumonia when the model calls it (nothing is coded for a negative call)."""
    probability, threshold = float(result["probability"]), float(result["threshold"])
    called = probability >= threshold
    flags = list(result.get("flags", []))
    words = "pneumonia suspected" if called else "no pneumonia suspected"
    conclusion = (
        f"AI first read (decision support, not a diagnosis): {words}; probability {probability:.3f} against the "
        f"model's operating point {threshold:.3f}."
    )
    if flags:
        conclusion += f" {describe(flags)} (flags: {', '.join(flags)})"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [{"coding": [{"system": V2_SECTION, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "AI first read of a chest X-ray (decision support, not a diagnosis)",
        },
        "effectiveDateTime": stamp,
        "issued": stamp,
        "performer": [{"display": f"pneumolens {result['model']['version']} ({result['model']['name']})"}],
        "result": [{"reference": observation_ref}],
        "conclusion": conclusion,
    }
    if called:
        report["conclusionCode"] = [{"coding": [{"system": SNOMED, "code": "233604007", "display": "Pneumonia"}]}]
    if study_uid:
        report["imagingStudy"] = [_study(study_uid, image_uid)]
    if order is not None and (request := _order(order)):
        report["basedOn"] = [request]
    return report


def transaction(
    result: dict[str, Any],
    image_key: str,
    study_uid: str | None = None,
    image_uid: str | None = None,
    order: Order | None = None,
) -> dict[str, Any]:
    """The Observation and its DiagnosticReport as a FHIR transaction Bundle, each a conditional create
    on its identifier. ``image_key``: what names the image (its SOP Instance UID, or the upload's
    SHA-256)."""
    sha = str(result["model"]["sha256"])
    obs_id, report_id = resource_id("Observation", image_key, sha), resource_id("DiagnosticReport", image_key, sha)
    obs = observation(result, study_uid, image_uid, order)
    obs["identifier"] = [{"system": URI, "value": obs_id}]
    report = diagnostic_report(result, obs_id, study_uid, image_uid, order)
    report["identifier"] = [{"system": URI, "value": report_id}]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": ident,
                "resource": resource,
                "request": {"method": "POST", "url": kind, "ifNoneExist": f"identifier={URI}|{ident}"},
            }
            for kind, ident, resource in (("Observation", obs_id, obs), ("DiagnosticReport", report_id, report))
        ],
    }
