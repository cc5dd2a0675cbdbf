"""Sending to a RIS over HL7 v2: ``listen --hl7-to APP@host:port`` sends each result as an ORU^R01
message (``pneumolens.integration.hl7v2``) over MLLP through an outbox
(``pneumolens.integration.outbox``), so none is lost while the RIS or its interface engine is away.

python-hl7 frames the message on the wire (MLLP) and parses the acknowledgement. ``AA`` or ``CA``
for this message's control ID takes it. No connection, no answer within ``TIMEOUT_S``, an answer
that is not an HL7 ACK of this message, ``AE`` or ``CE`` (an error at the receiver, which a resend
may clear): it waits for the next pass. ``AR`` or ``CR`` (the receiver rejects this message as it
is) refuses it for good, and the ACK is kept beside it. A resent message keeps its control ID, so a
receiver that saw it before can tell. Over plain TCP, or TLS (``--hl7-tls``: at least TLS 1.2, the
receiver's certificate checked against ``--hl7-tls-ca`` or the system's CAs and its host name, our
own certificate presented when given). The log names host and port, never a value of the message,
which holds the patient's identifiers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import hl7
from hl7.mllp import open_hl7_connection

from pneumolens.integration.outbox import Answer

TIMEOUT_S = 30.0


def control_id(message: bytes) -> str:
    """MSH-10 of an HL7 message's bytes, as python-hl7 reads it ("" when it cannot)."""
    try:
        return str(hl7.parse(message.decode("utf-8", "replace")).segment("MSH")(10))
    except Exception:  # noqa: BLE001 - not a message python-hl7 can parse
        return ""


@dataclass
class MllpSender:
    """Sends a message to an MLLP listener and reads its ACK."""

    host: str
    port: int
    timeout: float = TIMEOUT_S
    tls: ssl.SSLContext | None = None  # None: plain TCP
    kind: str = "hl7"

    def __post_init__(self) -> None:
        self.where = f"{self.host}:{self.port}" + (" (TLS)" if self.tls is not None else "")

    async def _exchange(self, body: bytes) -> hl7.Message:
        reader, writer = await open_hl7_connection(
            self.host, self.port, encoding="utf-8", encoding_errors="replace", ssl=self.tls
        )
        try:
            writer.writeblock(body)
            await writer.drain()
            return await reader.readmessage()
        finally:
            writer.close()

    def __call__(self, body: bytes) -> Answer:
        try:
            ack = asyncio.run(asyncio.wait_for(self._exchange(body), self.timeout))
        except TimeoutError:
            return Answer("retry", f"did not answer within {self.timeout:g} s")
        except ssl.SSLError as e:  # the handshake: an untrusted certificate, or ours refused
            return Answer("retry", f"could not be reached (TLS: {e.reason or type(e).__name__})")
        except OSError as e:
            return Answer("retry", f"could not be reached ({e.strerror or type(e).__name__})")
        except Exception as e:  # noqa: BLE001 - a broken frame or an answer python-hl7 cannot parse
            return Answer("retry", f"answered something that is not an HL7 message ({type(e).__name__})")
        try:
            msa = ack.segment("MSA")
            code, acked = str(msa(1)), str(msa(2))
        except (KeyError, IndexError):
            return Answer("retry", "answered without an MSA segment")
        if acked != control_id(body):
            return Answer("retry", "acknowledged another message")
        if code in ("AA", "CA"):
            return Answer("delivered")
        shown = code if re.fullmatch(r"[A-Z]{2}", code) else "an unknown code"
        if code in ("AR", "CR"):
            return Answer("rejected", f"ACK {shown}", str(ack).encode())
        return Answer("retry", f"answered {shown}")


def client_tls(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS to the RIS (``pneumolens.integration.dicom_node.tls_context`` as a client): its certificate checked
    against ``ca`` (default: the system's CAs) and its host name, ``cert`` and ``key`` presented
    when given. Errors name the ``--hl7-tls-*`` flag."""
    from pneumolens.integration.dicom_node import tls_context

    return tls_context(cert, key, ca, server=False, flags=("--hl7-tls-cert", "--hl7-tls-key", "--hl7-tls-ca"))
