"""A first read as an HL7 v2.5.1 ORU^R01 message, for a RIS that takes results over HL7 v2 rather
than DICOM or FHIR (``listen --hl7 DIR``, ``listen --hl7-to APP@host:port``).

The message files under the study's order, as a RIS matches results: ``PID`` carries the patient's
ID (with its issuer), name, birth date and sex from the image's header, ``ORC`` (order control
``RE``) and ``OBR`` the accession number as the filler order number and in ``OBR-18`` (placer
field 1, as IHE's Scheduled Workflow has it), and ``OBR`` the study's date and time and result
status ``P`` (preliminary: nobody has verified it). When the RIS sent the order
(``pneumolens.integration.hl7_orders``), ``ORC`` and ``OBR`` carry its placer and filler order
numbers, ``OBR-4`` the procedure ordered and ``ORC-12`` / ``OBR-16`` the ordering provider, as it
wrote them, unless the order names another patient than the image (then the message goes as
without an order, and ``PNLNOTE`` says why). The observations (``OBX``,
each status ``P``; local codes of the ``99PNL`` table unless said):

1. ``PNLCALL`` (ST): "pneumonia suspected" or "no pneumonia suspected", abnormal flag ``A`` or ``N``;
2. ``PNLPROB`` (NM): the calibrated probability, unit ``1`` (UCUM), the reference range below the
   operating point (``<0.3840``), the same abnormal flag;
3. ``PNLNOTE`` (TX): "decision support, not a diagnosis", and the caution and check flags in words;
4. ``PNLMODEL`` (ST): the model's name, version and weight hash;
5. ``110180`` (DCM, Study Instance UID) and ``PNLIMAGE`` (the image's SOP Instance UID), when known.

The patient's identifiers are in the message because a RIS files nothing without them; they are
never logged. Separators inside a value are escaped (HL7 2.10.4), and the message is written in
UTF-8 (``MSH-18`` ``UNICODE UTF-8``): a name in any script stays as it is. python-hl7 parses what
comes back (the ACK) and frames the message on the wire (``pneumolens.integration.hl7_outbox``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from pneumolens.integration.hl7_orders import Order
from pneumolens.lungs.flags import describe

VERSION = "2.5.1"
MEDIA_TYPE = "application/hl7-v2; charset=utf-8"  # what HL7 v2 over HTTP commonly declares (ER7 encoding)
# HL7 2.10.4: a separator inside a value is written as an escape sequence. python-hl7's ``escape``
# also turns every non-ASCII character into a one-byte hex sequence (X..), which is wrong in a UTF-8
# message (and for any character past U+00FF), so the map is applied here and text stays UTF-8.
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": "\\.br\\", "\n": "\\.br\\"}


def _esc(value: object) -> str:
    """``value`` as text safe inside a field; other control characters become spaces."""
    return "".join(_ESCAPES.get(c, " " if ord(c) < 0x20 else c) for c in str(value))


def _header(ds: Dataset | None, keyword: str) -> str:
    """A header value as text, empty when absent or unreadable (a malformed value is left out, not
    guessed)."""
    if ds is None:
        return ""
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001 - pydicom raises on some malformed values; the message goes without it
        return ""


def _name(ds: Dataset | None) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^prefix)."""
    try:
        pn = ds.get("PatientName") if ds is not None else None
    except Exception:  # noqa: BLE001
        pn = None
    if pn is not None and not hasattr(pn, "family_name"):  # several values (a malformed header): the first
        pn = pn[0] if len(pn) else None
    if not pn:
        return ""
    parts = [pn.family_name, pn.given_name, pn.middle_name, pn.name_suffix, pn.name_prefix]
    return "^".join(_esc(p) for p in parts).rstrip("^")


def _date(text: str, pattern: str) -> str:
    return text if re.fullmatch(pattern, text) else ""


def oru_r01(
    result: dict[str, Any],
    ds: Dataset | None = None,
    receiver: str = "",
    control_id: str | None = None,
    order: Order | None = None,
) -> str:
    """``result`` (``Engine.analyse``) as an ORU^R01 message, each segment ended by a carriage
    return. ``ds``: the DICOM header of the image read (patient, order, study); ``receiver``:
    ``APP`` or ``APP^FACILITY`` for MSH-5 and MSH-6; ``control_id``: MSH-10 (default: a new one);
    ``order``: the RIS's order of the image's accession number, when it sent one."""
    model = result["model"]
    probability, threshold = float(result["probability"]), float(result["threshold"])
    called = probability >= threshold
    flag = "A" if called else "N"
    flags = list(result.get("flags", []))
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    app, _, facility = receiver.partition("^")
    control_id = control_id or uuid.uuid4().hex[:20]
    msh = f"MSH|^~\\&|PNEUMOLENS||{_esc(app)}|{_esc(facility)}|{now}||ORU^R01^ORU_R01|{control_id}|P|{VERSION}"
    msh += "||||||UNICODE UTF-8"  # MSH-18, the character set
    patient_id, issuer = _header(ds, "PatientID"), _header(ds, "IssuerOfPatientID")
    pid_3 = _esc(patient_id) + (f"^^^{_esc(issuer)}" if issuer and patient_id else "")
    birth = _date(_header(ds, "PatientBirthDate"), r"\d{8}")
    sex = {"M": "M", "F": "F", "O": "O"}.get(_header(ds, "PatientSex").upper(), "U")
    pid = f"PID|1||{pid_3}||{_name(ds)}||{birth}|{sex}"
    when = _date(_header(ds, "StudyDate"), r"\d{8}") + _date(_header(ds, "StudyTime").split(".")[0], r"\d{4,6}")
    accession = _esc(_header(ds, "AccessionNumber"))
    notes = ["AI first read to inform a clinician's reading: decision support, not a diagnosis."]
    if order and not order.is_for(patient_id):  # the caller logs it (hl7_orders.filed_under)
        notes.append("The RIS's order of this accession number names another patient: not filed under it.")
        order = None
    # the order's values are ER7 as the RIS wrote them (escapes included), so they go in as they are
    placer, filler = (order.placer, order.filler or accession) if order else ("", accession)
    provider = order.provider if order else ""
    # observations to follow (RE), for the order the accession number names; ORC-12 the ordering provider
    orc = f"ORC|RE|{placer}|{filler}" + (f"{'|' * 9}{provider}" if provider else "")
    service = (order.service if order else "") or "18748-4^Diagnostic imaging study^LN"
    obr = ["OBR", "1", placer, filler, service, "", ""]
    obr += [when] + [""] * 14 + [now, "", "", "P"]  # OBR-7 observation time, OBR-22 status change, OBR-25 status
    obr[16], obr[18] = provider, accession  # OBR-16 ordering provider, OBR-18 placer field 1
    if order and order.cancelled:
        notes.append(f"The RIS cancelled or discontinued this order (ORC-1 {order.control}) before this result.")
    if flags:
        notes.append(f"{describe(flags)} (flags: {', '.join(flags)})")
    words = "pneumonia suspected" if called else "no pneumonia suspected"
    method = f"{model['name']} (pneumolens {model['version']}, weights sha256:{str(model['sha256'])[:12]})"
    observations = [
        ("ST", "PNLCALL^AI first read (decision support, not a diagnosis)^99PNL", _esc(words), "", "", flag),
        ("NM", "PNLPROB^AI probability of pneumonia^99PNL", f"{probability:.4f}", "1^^UCUM", f"<{threshold:.4f}", flag),
        ("TX", "PNLNOTE^Notes^99PNL", "~".join(_esc(n) for n in notes), "", "", ""),
        ("ST", "PNLMODEL^Model^99PNL", _esc(method), "", "", ""),
    ]
    for code, keyword in (
        ("110180^Study Instance UID^DCM", "StudyInstanceUID"),
        ("PNLIMAGE^Image read^99PNL", "SOPInstanceUID"),
    ):
        if value := _header(ds, keyword):
            observations.append(("ST", code, _esc(value), "", "", ""))
    obx = [
        f"OBX|{i}|{kind}|{code}||{value}|{unit}|{ref}|{abnormal}|||P"
        for i, (kind, code, value, unit, ref, abnormal) in enumerate(observations, 1)
    ]
    return "".join(f"{segment}\r" for segment in [msh, pid, orc, "|".join(obr), *obx])  # each segment ends in CR
