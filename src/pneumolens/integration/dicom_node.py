"""``pneumolens listen``: a DICOM node (pynetdicom) that gives every incoming chest X-ray a first read.

It accepts C-STORE of CR and DX images (and C-ECHO), scores each with the lung plausibility flags,
and writes a **Secondary Capture** per image: the X-ray with the explanation map (occlusion, the
default of ``pneumolens.explain``) over it and a burned-in caption ("AI first read: probability
0.93, above operating point; not a diagnosis"), in the same study (Study Instance UID) and a new
series, so a PACS viewer files it beside the original. It can
forward each result to another node (C-STORE SCU). With ``sr=True`` (``--sr``) it also writes a
DICOM Structured Report of each result (``pneumolens.integration.dicom_report``), for a PACS or RIS to read, and
with ``gsps=True`` (``--gsps``) a Grayscale Softcopy Presentation State that outlines the map on the
original image (``pneumolens.integration.dicom_presentation``), and with ``seg=True`` (``--seg``) the map's graded
values as a fractional Segmentation (``pneumolens.integration.dicom_segmentation``); with ``fhir`` (``--fhir DIR``)
each result is also a FHIR Observation in a folder (``pneumolens.integration.fhir``), and with ``fhir_outbox``
(``--fhir-url``) the Observation and a DiagnosticReport go to a FHIR server; with ``hl7``
(``--hl7 DIR``) each result is an HL7 v2 ORU^R01 message (``pneumolens.integration.hl7v2``), and with
``hl7_outbox`` (``--hl7-to``) it goes to a RIS over MLLP; both stored and forwarded
(``pneumolens.integration.outbox``). A
dataset that cannot be read gets a failure status; the node keeps serving. Every result and refusal
goes to the audit trail with a salted hash of the Study Instance UID; patient identifiers are
copied into the result objects (the PACS needs them to file them) but never into logs or the audit
trail. Optionally only listed calling AE titles are let in, and the node speaks TLS (mutual with a
CA). With ``retain_days`` (``--retain-days``) it deletes its results, observations and kept
originals older than that, at start and hourly. It stops in bounded time (``Node.run``).
"""

from __future__ import annotations

import copy
import io
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    ComprehensiveSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SegmentationStorage,
    generate_uid,
)

from pneumolens.checkpoint import atomic_write
from pneumolens.data.dicom import device_of, uid_file_name
from pneumolens.data.images import ImageReadError, read_image
from pneumolens.data.scope import dataset_flags
from pneumolens.integration.dicom_qr import FIND as QR_FIND
from pneumolens.integration.dicom_qr import GET as QR_GET
from pneumolens.integration.dicom_qr import MOVE as QR_MOVE
from pneumolens.integration.dicom_qr import PATIENT_ROOT, QueryRetrieve
from pneumolens.integration.hl7_orders import OrderBook
from pneumolens.integration.outbox import Outbox
from pneumolens.integration.send_on import SendOn
from pneumolens.lungs.flags import BORDERLINE_FLAG, GREY_LUNGS_FLAG, check_flags
from pneumolens.monitoring.audit import AuditLog, sha256_bytes

if TYPE_CHECKING:  # the DICOMweb service (FastAPI) is imported only by a node that serves it
    from pneumolens.integration.dicomweb_service import DicomwebService

log = logging.getLogger(__name__)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"
# What the node writes, for its query/retrieve service: picture, report, presentation state, segmentation
RESULT_CLASSES = (
    SECONDARY_CAPTURE,
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SegmentationStorage,
)
ACCEPTED = (CR, DX_PRESENTATION, DX_PROCESSING)
# Transfer syntaxes the node accepts for them: uncompressed and deflated (pydicom; big endian is retired
# but old modalities send it), RLE (pydicom), JPEG baseline and JPEG 2000 (Pillow), JPEG extended and
# lossless, and JPEG-LS (pylibjpeg-libjpeg). Lossless JPEG (process 14, selection value 1) is what most CR
# and DX modalities send when they compress.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
RESULT_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless]
# Status codes of PS3.4 C-STORE: success, and "cannot understand" for a dataset we cannot read
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700

# Copied from the original so the result is filed with its patient and study (never logged); first
# the character set the names are written in, without which a Greek or Japanese name is written as
# question marks.
PATIENT_AND_STUDY = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


# the cautions (``lungs.flags.CAUTIONS``) in the caption's words
CAUTION_CAPTIONS = {
    GREY_LUNGS_FLAG: "grey lungs, where false positives concentrate",
    BORDERLINE_FLAG: "borderline, among the model's least sure calls",
}


def caption_for(result: dict) -> str:
    side = "above" if result["probability"] >= result["threshold"] else "below"
    text = f"AI first read: probability {result['probability']:.2f}, {side} operating point; not a diagnosis"
    checks = check_flags(result.get("flags", []))
    if checks:
        text += f" | check image: {', '.join(checks)}"
    for flag, words in CAUTION_CAPTIONS.items():  # each caution on a line of its own
        if flag in result.get("flags", []):
            text += f" | caution: {words}"
    return text


def burn_in(picture: Image.Image, caption: str, model: str, method: str | None = None) -> np.ndarray:
    """The overlay picture with a black band below carrying the caption (RGB uint8). Each " | " part
    of the caption starts a line, and a line too long for the picture wraps between words, so no
    flag runs off the edge. The last line names the model and the map (``method``)."""
    picture = picture.convert("RGB")
    w = max(512, picture.width)
    if picture.width != w:
        picture = picture.resize((w, round(picture.height * w / picture.width)), Image.Resampling.BILINEAR)
    from pneumolens.explain.render import wrapped

    font = ImageFont.load_default(size=max(14, w // 48))
    lines = [line for part in caption.split(" | ") for line in wrapped(part, w - 16, font)]
    step = font.size + 8
    canvas = Image.new("RGB", (w, picture.height + (len(lines) + 1) * step + 10), "black")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((8, picture.height + 4 + i * step), line, fill="yellow", font=font)
    maker = f"{model} (pneumolens), {method} map" if method else f"{model} (pneumolens)"
    footer = f"{maker} - decision support only"
    draw.text((8, picture.height + 4 + len(lines) * step), footer, fill="white", font=font)
    return np.asarray(canvas)


def secondary_capture(original: Dataset, rgb: np.ndarray, series_uid: str, caption: str) -> Dataset:
    """A Secondary Capture Image in the original's study, in the series ``series_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for keyword in PATIENT_AND_STUDY:
        if keyword in original:
            setattr(ds, keyword, original.data_element(keyword).value)
    now = datetime.now(UTC)
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 9901, 1
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.SeriesDescription = "pneumolens AI first read - not a diagnosis"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = caption
    ds.BurnedInAnnotation = "YES"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer, ds.SoftwareVersions = "pneumolens", _version()
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = original.SOPClassUID, original.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def not_read_notice(original: Dataset, reason: str, series_uid: str, model: str) -> Dataset:
    """A Secondary Capture in the original's study saying that the AI did not read it, and why
    (``reason``: pneumolens' own words, quoting coded header values only): so that nobody takes a
    study without a first read on one of its films for a study the AI found nothing in."""
    caption = f"AI did not read this image: {reason} | no AI result for this image; not a diagnosis"
    rgb = burn_in(Image.new("RGB", (512, 8), "black"), caption, model)
    return secondary_capture(original, rgb, series_uid, caption)


def _version() -> str:
    from pneumolens import __version__

    return __version__


def result_objects(
    ds: Dataset,
    result: dict,
    series_for: Callable[..., str],
    sr: bool = False,
    gsps: bool = False,
    seg: bool = False,
) -> list[Dataset]:
    """The DICOM objects for one image read with its map (``Engine.analyse(..., explain=True)``): the
    Secondary Capture, then with ``sr`` the Structured Report, with ``gsps`` the presentation state and
    with ``seg`` the map as a fractional segmentation (each of those three left out, with a warning,
    when it cannot be built; the segmentation also when the map supports nothing). ``series_for(study
    UID, modality)`` gives each object's series. An image without a study (invalid, but sent) gets
    one new study, named in ``ds`` and shared by its objects."""
    caption = caption_for(result)
    picture = result["explanation"].picture  # drawn once, also for a heatmap_png
    rgb = burn_in(picture, caption, result["model"]["name"], result["method"])
    if not str(getattr(ds, "StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = generate_uid()
    filed_in = str(ds.StudyInstanceUID)
    results = [secondary_capture(ds, rgb, series_for(filed_in, "OT"), caption)]
    if sr:
        from pneumolens.integration.dicom_report import structured_report

        series = series_for(filed_in, "SR")
        results += _optional("structured report", lambda: structured_report(ds, result, series))
    if gsps:
        from pneumolens.integration.dicom_presentation import presentation_state

        series = series_for(filed_in, "PR")
        results += _optional("presentation state", lambda: presentation_state(ds, result, series, caption))
    if seg:
        from pneumolens.integration.dicom_segmentation import segmentation

        series = series_for(filed_in, "SEG")
        results += _optional("segmentation", lambda: segmentation(ds, result, series))
    return results


def _as_accepted(made: Dataset, assoc) -> Dataset:
    """``made`` in a transfer syntax the destination accepted for its class: a compressed object
    (the segmentation's RLE) goes uncompressed to a destination that takes only that."""
    syntax = str(made.file_meta.TransferSyntaxUID)
    accepted = {str(c.transfer_syntax[0]) for c in assoc.accepted_contexts if c.abstract_syntax == made.SOPClassUID}
    if syntax in accepted or not made.file_meta.TransferSyntaxUID.is_compressed:
        return made
    plain = copy.deepcopy(made)
    plain.decompress()  # RLE: pydicom decodes it itself
    return plain


# The names the node gives its files (``uid_file_name`` and generated UIDs): retention deletes only these.
NODE_FILE = re.compile(r"(?:[0-9.]{1,64}|uid-[0-9a-f]{32})\.(?:dcm|json|hl7)")
PRUNE_EVERY = 3600.0  # seconds between retention passes while the node runs


def prune_node_files(folder: Path, before: float) -> int:
    """Delete the node's own files in ``folder`` (named by a UID, ``NODE_FILE``) last modified before
    ``before`` (seconds since the epoch); any other file is left alone, so a folder given by mistake
    loses nothing else. Returns how many were deleted."""
    deleted = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            if NODE_FILE.fullmatch(path.name) and path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                deleted += 1
        except FileNotFoundError:  # gone meanwhile
            continue
    return deleted


def _optional(what: str, make: Callable[[], Dataset | None]) -> list[Dataset]:
    """``[make()]``, or nothing when it fails (or makes nothing): the picture still goes out, and the
    log says which object is missing and the exception's type (never its message, which can quote a
    header value)."""
    try:
        made = make()
        return [] if made is None else [made]
    except Exception as e:  # noqa: BLE001
        log.warning("listen: no %s for this image (%s); the picture is written", what, type(e).__name__)
        return []


@dataclass
class Destination:
    host: str
    port: int
    ae_title: str
    tls: ssl.SSLContext | None = None  # client-side TLS to the destination; None: plain TCP

    @classmethod
    def parse(cls, text: str, flag: str = "--forward") -> Destination:
        """``AET@host:port``; an error names ``flag``."""
        try:
            aet, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            if not 1 <= int(port) <= 65535:
                raise ValueError(port)
            return cls(host, int(port), aet)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: expected AE_TITLE@host:port") from None


def tls_context(
    cert: str | None,
    key: str | None,
    ca: str | None = None,
    server: bool = True,
    flags: tuple[str, str, str] = ("--tls-cert", "--tls-key", "--tls-ca"),
) -> ssl.SSLContext:
    """TLS at least 1.2, for DICOM (the PS3.15 secure transport) and MLLP.

    ``server=True``: for incoming associations, with our certificate and key; with ``ca``, peers must
    present a certificate signed by it (mutual TLS). ``server=False``: for a connection we open
    (forwarding, ``pull``, a RIS): the peer's certificate must be signed by ``ca`` (only it; the
    system's CAs when None) and name its host, and ours is presented when given. Errors name the
    file and its flag (``flags``: those of the certificate, key and CA).
    """
    for flag, path in zip(flags, (cert, key, ca), strict=True):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH, cafile=ca)
    except ssl.SSLError as e:
        raise ValueError(f"{flags[2]} {ca}: not a PEM CA certificate ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise ValueError(
                f"{flags[0]} {cert} / {flags[1]} {key}: not a matching PEM certificate and key ({e})"
            ) from None
    if server and ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class Node:
    engine: object  # pneumolens.service.engine.Engine
    audit: AuditLog | None
    out: Path
    ae_title: str = "PNEUMOLENS"
    forward: Destination | None = None
    _series: dict[tuple[str, str], str] = field(default_factory=dict)  # (study UID, modality) -> series UID
    _lock: threading.Lock = field(default_factory=threading.Lock)
    allowed_aets: tuple[str, ...] = ()  # calling AE titles let in; empty: any
    tls: ssl.SSLContext | None = None  # server-side TLS; None: plain TCP
    stored: int = 0
    refused: int = 0
    skipped: int = 0  # images acknowledged but not read: their header says they are no frontal chest film
    rejected: int = 0  # associations turned away (calling AE title not allowed)
    sr: bool = False  # also write (and forward) a Structured Report of each result
    gsps: bool = False  # and a Grayscale Softcopy Presentation State: the map's outline over the original
    seg: bool = False  # and the map as a fractional Segmentation of the original (graded values)
    keep: Path | None = None  # also store each image read, as received, here (for a site's own evaluation)
    notice: bool = False  # for an image out of scope, a Secondary Capture saying the AI did not read it
    retain_days: float | None = None  # delete what the node wrote and kept older than this; None: keep all
    fhir: Path | None = None  # also write each result as a FHIR Observation (JSON) here
    fhir_outbox: Outbox | None = None  # and post it with its DiagnosticReport to a FHIR server (store and forward)
    hl7: Path | None = None  # also write each result as an HL7 v2 ORU^R01 message here
    hl7_outbox: Outbox | None = None  # and send it to a RIS over MLLP (store and forward; needs ``hl7``)
    hl7_receiver: str = ""  # MSH-5 and MSH-6 of those messages: APP or APP^FACILITY
    qr: QueryRetrieve | None = None  # serve the results in ``out`` to C-FIND, C-GET and C-MOVE (``--qr``)
    stow_outbox: Outbox | None = None  # and store them in a PACS over DICOMweb (STOW-RS; store and forward)
    web: DicomwebService | None = None  # also take images over DICOMweb (STOW-RS) on another port
    orders: OrderBook | None = None  # the RIS's orders (``pneumolens orders``): each ORU goes under its order

    def __post_init__(self) -> None:
        self.send_on = SendOn(
            self.fhir, self.fhir_outbox, self.hl7, self.hl7_outbox, self.hl7_receiver, self.stow_outbox, self.orders
        )

    def series_for(self, study_uid: str, modality: str = "OT") -> str:
        """This node's result series in the study: one for the pictures, one for the reports (a series
        holds one modality)."""
        with self._lock:
            return self._series.setdefault((study_uid, modality), generate_uid())

    def handle_store(self, event) -> int:
        """C-STORE: score, write the Secondary Capture (and the report and presentation state), forward,
        audit.
        Never raises."""
        t0 = time.perf_counter()
        study = None
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study = str(getattr(ds, "StudyInstanceUID", "") or "") or None
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        except Exception as e:  # noqa: BLE001 - a dataset pydicom cannot even re-encode
            log.warning("listen: unreadable dataset refused (%s)", type(e).__name__)
            self._audit_refusal(b"", f"unreadable dataset ({type(e).__name__})", study, t0)
            return CANNOT_UNDERSTAND
        return self.store(ds, data, t0)

    def store(self, ds: Dataset, data: bytes, t0: float) -> int:
        """An image received (``ds``, as the file ``data``; by C-STORE or over DICOMweb): score it,
        write the Secondary Capture (and the report, presentation state and segmentation), send
        on, forward, audit; its DIMSE status. ``t0``: when it arrived (``time.perf_counter``).
        Never raises."""
        study = str(getattr(ds, "StudyInstanceUID", "") or "") or None
        try:
            result = self.engine.analyse(  # no heatmap_png: the Secondary Capture carries the picture
                read_image("received.dcm", data=data), explain=True, from_header=dataset_flags(ds), heatmap_png=False
            )
        except ImageReadError as e:
            if e.out_of_scope:
                return self.skip(ds, data, e, study, t0)
            return self.refuse(data, e.reason, study, t0)
        try:
            results = result_objects(ds, result, self.series_for, sr=self.sr, gsps=self.gsps, seg=self.seg)
            if self.keep is not None:  # the original first: a result always has its image beside it
                atomic_write(
                    self.keep / f"{uid_file_name(ds.SOPInstanceUID)}.dcm", lambda tmp: Path(tmp).write_bytes(data)
                )
            self._deliver(results)
            self.send_on.send(result, ds, data)
        except (ConnectionError, OSError) as e:  # pneumolens' own words, or the file system's: no header values
            log.error("listen: could not write or forward the result: %s", e)
            return OUT_OF_RESOURCES
        except Exception as e:  # noqa: BLE001 - the node must keep serving
            # pydicom's messages can quote the header value they choke on (a birth date, a name): the
            # type goes to the log, the whole traceback only at debug level (-v)
            log.error("listen: could not write or forward the result (%s; -v for the traceback)", type(e).__name__)
            log.debug("listen: the failure in full", exc_info=True)
            return OUT_OF_RESOURCES
        if self.audit is not None:
            self.audit.record(
                "listen",
                sha256_bytes(data),
                self.engine.audit_model,
                result,
                study_uid=study,
                duration_ms=1000 * (time.perf_counter() - t0),
                device=device_of(data),
            )
        self.stored += 1
        names = ", ".join(f"{made.SOPInstanceUID}.dcm" for made in results)
        log.info("listen: result %s written (%s, p=%.3f)", names, result["label"], result["probability"])
        return SUCCESS

    def _deliver(self, made: list[Dataset]) -> None:
        """Write each object to ``out``, hand it to the STOW-RS outbox and forward it (with ``forward``)."""
        for one in made:
            encoded = io.BytesIO()
            one.save_as(encoded, enforce_file_format=True)
            atomic_write(
                self.out / f"{one.SOPInstanceUID}.dcm", lambda tmp, b=encoded: Path(tmp).write_bytes(b.getvalue())
            )
            self.send_on.store(one.SOPInstanceUID, encoded.getvalue())
        if self.forward is not None:
            self._send(made)

    def skip(self, ds: Dataset, data: bytes, refusal: ImageReadError, study: str | None, t0: float) -> int:
        """An image the model is not for (a lateral view, another body part: ``pneumolens.data.scope``):
        acknowledged, so that a PACS sending the whole study sees no failure, but not read; counted,
        logged, audited (``reason`` quotes coded header values only), kept with ``keep``, and with
        ``notice`` a Secondary Capture saying so goes where results go; SUCCESS (OUT_OF_RESOURCES when
        that notice cannot be written or sent, so that the sender tries again)."""
        reason = refusal.reason
        self.skipped += 1
        log.info("listen: image not read: %s", reason)
        try:
            if self.keep is not None:  # accepted like any other film, so it is there to be retrieved
                path = self.keep / f"{uid_file_name(ds.SOPInstanceUID)}.dcm"
                atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
            if self.notice:
                if not str(getattr(ds, "StudyInstanceUID", "") or ""):
                    ds.StudyInstanceUID = generate_uid()
                name = self.engine.info["name"]
                self._deliver([not_read_notice(ds, reason, self.series_for(str(ds.StudyInstanceUID), "OT"), name)])
        except Exception as e:  # noqa: BLE001 - the node must keep serving; the type only (no header values)
            log.error("listen: could not write or forward the notice of an image not read (%s)", type(e).__name__)
            return OUT_OF_RESOURCES
        self._audit_refusal(data, refusal.audited, study, t0)
        return SUCCESS

    def refuse(self, data: bytes, reason: str, study: str | None, t0: float) -> int:
        """An image the node cannot read as a radiograph: counted, logged (``reason`` is
        pneumolens' own words, never a header value) and audited; CANNOT_UNDERSTAND."""
        self.refused += 1
        log.warning("listen: image refused: %s", reason)
        self._audit_refusal(data, reason, study, t0)
        return CANNOT_UNDERSTAND

    def _audit_refusal(self, data: bytes, reason: str, study: str | None, t0: float) -> None:
        if self.audit is not None:
            ms = 1000 * (time.perf_counter() - t0)
            model = self.engine.audit_model
            device = device_of(data)
            self.audit.record(
                "listen", sha256_bytes(data), model, error=reason, study_uid=study, duration_ms=ms, device=device
            )

    def _send(self, results: list[Dataset]) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        for sop_class in dict.fromkeys(made.SOPClassUID for made in results):
            syntaxes = {str(made.file_meta.TransferSyntaxUID) for made in results if made.SOPClassUID == sop_class}
            ae.add_requested_context(sop_class, sorted(syntaxes - {ExplicitVRLittleEndian}) + [ExplicitVRLittleEndian])
        dest = self.forward
        tls_args = (dest.tls, dest.host) if dest.tls is not None else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            raise ConnectionError(
                f"forward destination {dest.ae_title}@{dest.host}:{dest.port} refused the association"
            )
        try:
            for made in results:
                status = assoc.send_c_store(_as_accepted(made, assoc))
                if not status or status.Status != SUCCESS:
                    raise ConnectionError(f"forward destination answered status {getattr(status, 'Status', None)}")
        finally:
            assoc.release()

    def prune(self) -> int:
        """Delete the results, observations and kept originals older than ``retain_days`` (nothing
        without it); logs the count, never a name. Returns the count."""
        if self.retain_days is None:
            return 0
        before = time.time() - 86400 * self.retain_days
        folders = [self.out, *([self.keep] if self.keep is not None else []), *self.send_on.folders()]
        deleted = sum(prune_node_files(folder, before) for folder in folders)
        if deleted:
            log.info("listen: retention: deleted %d file(s) older than %g day(s)", deleted, self.retain_days)
        return deleted

    def _prune_and_go_on(self) -> None:
        try:
            self.prune()
        except OSError as e:  # the node keeps serving; the next pass tries again
            log.warning("listen: retention pass failed (%s)", e.strerror or type(e).__name__)

    def server(self, host: str, port: int):
        """Start the SCP in the background and return the running server (``.shutdown()`` stops it;
        ``run`` serves until told to stop)."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        films_served = self.qr is not None and self.qr.store.originals is not None  # --qr with --keep
        for uid in ACCEPTED:  # C-STORE from modalities; with films served, also back over a viewer's C-GET
            roles = {"scp_role": True, "scu_role": True} if films_served else {}
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES), **roles)
            if films_served:  # C-MOVE sends a film on in the syntax it came in: a context per syntax
                for syntax in TRANSFER_SYNTAXES:
                    ae.add_requested_context(uid, syntax)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        if self.qr is not None:  # Study Root and Patient Root FIND, GET and MOVE of the node's own results
            for uid in (QR_FIND, QR_GET, QR_MOVE, *PATIENT_ROOT):
                ae.add_supported_context(uid)
            for uid in RESULT_CLASSES:  # C-GET sends them over the viewer's association (it is their SCP)
                ae.add_supported_context(uid, RESULT_SYNTAXES, scp_role=True, scu_role=False)
                ae.add_requested_context(uid, RESULT_SYNTAXES)  # C-MOVE sends them on a new one
            handlers += [(evt.EVT_C_FIND, self.qr.on_find), (evt.EVT_C_GET, self.qr.on_get)]
            handlers += [(evt.EVT_C_MOVE, self.qr.on_move)]
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in [self.keep, *self.send_on.folders()]:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        if self.allowed_aets:
            ae.require_calling_aet = list(self.allowed_aets)
        return ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=self.tls)

    def _on_rejected(self, event) -> None:
        with self._lock:
            self.rejected += 1
        peer = event.assoc.requestor
        why = "not on --allow-aet" if self.allowed_aets and peer.ae_title not in self.allowed_aets else "see above"
        log.warning("listen: association from %s (calling AE %r) rejected: %s", peer.address, peer.ae_title, why)

    def run(
        self,
        host: str,
        port: int,
        stop: threading.Event,
        drain_seconds: float = 10.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Serve until ``stop`` is set, then shut down in bounded time. ``on_ready`` runs once the port
        (and the DICOMweb port, with ``web``) is bound (a port that cannot be bound raises ``OSError``
        before it, the DICOMweb port ``ValueError`` naming its flag).

        New associations are refused at once; those in progress get ``drain_seconds`` to finish (a
        result being written is not cut off), then are aborted. pynetdicom's blocking server leaves
        its associations running when interrupted, and their non-daemon socket threads can hold the
        process open; this path ends them. With ``retain_days`` a retention pass (``prune``) runs at
        start and hourly.
        """
        server = self.server(host, port)
        sender_stop, senders = self.send_on.start()
        try:
            if self.web is not None:  # inside the try: a DICOMweb port that cannot be had stops the DIMSE one too
                self.web.start(self, host)
            self._prune_and_go_on()
            pruned = time.monotonic()
            if on_ready is not None:
                on_ready()
            while not stop.wait(0.5):  # a timed wait: signal handlers run between waits
                if time.monotonic() - pruned >= PRUNE_EVERY:
                    self._prune_and_go_on()
                    pruned = time.monotonic()
        finally:
            log.info("listen: stopping; no new associations")
            server.shutdown()  # stops accepting, closes the listening socket
            if self.web is not None:  # lets the requests in progress finish
                self.web.stop()
            deadline = time.monotonic() + drain_seconds
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                log.warning("listen: aborting an association still open after %.0f s", drain_seconds)
                assoc.abort()
            for assoc in server.active_associations:
                assoc.join(2.0)
            self.send_on.stop(sender_stop, senders)  # what is not taken stays for the next start
