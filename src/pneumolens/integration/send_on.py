"""A result sent on to the EHR and the RIS, from the DICOM node and from the watch folder alike:
a FHIR Observation file (``--fhir DIR``) and its transaction Bundle for a FHIR server
(``--fhir-url``), and an HL7 v2 ORU^R01 file (``--hl7 DIR``) and message for a RIS
(``--hl7-to``), filed under the RIS's order when ``orders`` received it (``--orders``), the last
two through store-and-forward outboxes (``pneumolens.integration.outbox``); and, from
the node, the DICOM objects it makes to a PACS over DICOMweb (``--stow-url``), through a third.

Only a DICOM input is sent on: its header names the study (and, for HL7, the patient and the order)
that the receiver files the result under; a JPEG or PNG names nothing and is skipped. Each file is
named by the image's SOP Instance UID (else the input's SHA-256), so an image read twice replaces
its own files and queued messages rather than adding to them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pneumolens.checkpoint import atomic_write
from pneumolens.data.dicom import uid_file_name
from pneumolens.integration.hl7_orders import OrderBook, filed_under, order_for
from pneumolens.integration.outbox import Outbox
from pneumolens.monitoring.audit import sha256_bytes


@dataclass
class SendOn:
    fhir: Path | None = None  # write each result as a FHIR Observation (JSON) here
    fhir_outbox: Outbox | None = None  # and post it with its DiagnosticReport to a FHIR server
    hl7: Path | None = None  # write each result as an HL7 v2 ORU^R01 message here
    hl7_outbox: Outbox | None = None  # and send it to a RIS over MLLP (needs ``hl7``)
    hl7_receiver: str = ""  # MSH-5 and MSH-6 of those messages: APP or APP^FACILITY
    stow_outbox: Outbox | None = None  # the node's DICOM objects, to a PACS's STOW-RS service
    orders: OrderBook | None = None  # the RIS's orders (``pneumolens orders``): the ORU goes under its order

    @property
    def active(self) -> bool:
        return self.fhir is not None or self.fhir_outbox is not None or self.hl7 is not None

    def folders(self) -> list[Path]:
        return [f for f in (self.fhir, self.hl7) if f is not None]

    def send(self, result: dict[str, Any], header: Dataset, data: bytes) -> None:
        """Write and queue what is asked for ``result`` of the DICOM image ``header`` (bytes ``data``)."""
        study = str(header.get("StudyInstanceUID", "") or "") or None
        sop = str(header.get("SOPInstanceUID", "") or "") or None
        key = sop or sha256_bytes(data)
        name = uid_file_name(key)
        order = order_for(self.orders, header)
        filed = filed_under(order, header)  # not another patient's (the ORU says so in a note)
        if self.fhir is not None:
            from pneumolens.integration.fhir import observation

            text = json.dumps(observation(result, study, sop, filed), indent=1)
            atomic_write(self.fhir / f"{name}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        if self.fhir_outbox is not None:
            from pneumolens.integration.fhir import transaction

            bundle = transaction(result, key, study, sop, filed)
            self.fhir_outbox.put(name, json.dumps(bundle).encode())
        if self.hl7 is not None:
            from pneumolens.integration.hl7v2 import oru_r01

            message = oru_r01(result, header, self.hl7_receiver, order=order).encode("utf-8")
            atomic_write(self.hl7 / f"{name}.hl7", lambda tmp: Path(tmp).write_bytes(message))
            if self.hl7_outbox is not None:
                self.hl7_outbox.put(name, message)

    def store(self, name: str, encoded: bytes) -> None:
        """Queue one DICOM object the node made (a Part 10 file's bytes) for the PACS (``--stow-url``)."""
        if self.stow_outbox is not None:
            self.stow_outbox.put(name, encoded)

    def outboxes(self) -> list[Outbox]:
        return [box for box in (self.fhir_outbox, self.hl7_outbox, self.stow_outbox) if box is not None]

    def start(self) -> tuple[threading.Event, list[threading.Thread]]:
        """The outboxes' sender threads; ``stop`` ends them."""
        stop = threading.Event()
        return stop, [box.start(stop) for box in self.outboxes()]

    def stop(self, stop: threading.Event, threads: list[threading.Thread]) -> None:
        """What is not taken stays in the outboxes for the next start."""
        for box, thread in zip(self.outboxes(), threads, strict=True):
            box.stop(stop, thread)
