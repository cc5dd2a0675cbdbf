"""How long a modality waits for the DICOM node: seconds per image from C-STORE request to answer.

    python benchmarks/node.py [--images ../shared/data/fullres_samples] [--n 32] [--model runs/x]

Each original-resolution sample (JPEG) becomes a 12-bit MONOCHROME2 DX file (explicit VR little
endian) in a temporary folder. A node (``pneumolens.integration.dicom_node.Node``, the shipped model unless
``--model``) listens on a free loopback port, and a client in the same process sends every file
through one association, timing each C-STORE until its answer: the node answers once the picture
(and the report, presentation state and segmentation, when asked) is written, so the time covers
decoding, the lung mask, the model, the occlusion map, the DICOM objects and the disk. Run once per
output set: the Secondary Capture alone, with ``--sr``, with ``--sr --gsps``, with ``--sr --gsps
--seg``, with the picture sent on as FHIR and HL7 v2 (``--fhir DIR --fhir-url``, ``--hl7 DIR
--hl7-to``) to a stand-in FHIR server and MLLP listener in the same process, and over DICOMweb:
each image sent by dicomweb-client to the node's STOW-RS service (``--dicomweb-port``, one
instance per request, timed until its answer) and the picture stored on by STOW-RS
(``--stow-url``) in a stand-in PACS. For the last two rows it also gives the median time from the
sender's request to the receivers' receipt (the outboxes send in the background: the sender's
answer does not wait for them). Prints a
markdown table, with the median size of what the node writes per image (all its files). Only
loopback is contacted; nothing is written outside the temporary folder. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumolens.integration.dicom_node import DX_PRESENTATION, SUCCESS, Node
from pneumolens.integration.dicomweb_service import DicomwebService
from pneumolens.integration.fhir_outbox import FhirSender
from pneumolens.integration.hl7_outbox import MllpSender
from pneumolens.integration.outbox import Outbox
from pneumolens.integration.stow_outbox import StowSender
from pneumolens.service.engine import Engine
from pneumolens.service.settings import Settings

OUTPUTS = {
    "picture (Secondary Capture)": {},
    "picture + report (`--sr`)": {"sr": True},
    "picture + report + overlay (`--sr --gsps`)": {"sr": True, "gsps": True},
    "picture + report + overlay + graded map (`--sr --gsps --seg`)": {"sr": True, "gsps": True, "seg": True},
    "picture, sent on as FHIR and HL7 v2 (`--fhir-url`, `--hl7-to`)": {"send_on": True},
    "picture, taken and stored on over DICOMweb (`--dicomweb-port`, `--stow-url`)": {"dicomweb": True},
}


class Receivers:
    """A stand-in FHIR server, PACS (STOW-RS) and MLLP listener on loopback, noting when each message
    arrives."""

    def __init__(self) -> None:
        self.fhir: list[float] = []
        self.hl7: list[float] = []
        self.stow: list[float] = []
        fhir, stow = self.fhir, self.stow

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                (stow if self.path.startswith("/dicomweb") else fhir).append(time.perf_counter())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.fhir_url = f"http://127.0.0.1:{self.http.server_address[1]}/fhir"
        self.stow_url = f"http://127.0.0.1:{self.http.server_address[1]}/dicomweb"
        from hl7.mllp import start_hl7_server

        async def handle(reader, writer):
            try:
                while not reader.at_eof():
                    message = await reader.readmessage()
                    self.hl7.append(time.perf_counter())
                    writer.writemessage(message.create_ack("AA"))
                    await writer.drain()
            except Exception:  # noqa: BLE001 - the sender hung up
                pass

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        serving = asyncio.run_coroutine_threadsafe(start_hl7_server(handle, "127.0.0.1", 0), self.loop).result(10)
        self.hl7_port = serving.sockets[0].getsockname()[1]

    def outboxes(self, out: Path) -> dict:
        return {
            "fhir": out / "fhir",
            "fhir_outbox": Outbox(out / "fhir" / "outbox", FhirSender(self.fhir_url)),
            "hl7": out / "hl7",
            "hl7_outbox": Outbox(out / "hl7" / "outbox", MllpSender("127.0.0.1", self.hl7_port), suffix=".hl7"),
        }

    def stow_outbox(self, out: Path) -> dict:
        return {"stow_outbox": Outbox(out / "stow-outbox", StowSender(self.stow_url), suffix=".dcm")}


def as_dicom(jpeg: Path) -> Dataset:
    """The JPEG's grey levels as a 12-bit DX image of a made-up patient and study."""
    gray = np.asarray(Image.open(jpeg).convert("L"), dtype=np.float32) / 255
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DX_PRESENTATION, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "DX"
    ds.PatientName, ds.PatientID = "Benchmark^Node", "BENCH-1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = gray.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.round(gray * 4095).astype(np.uint16).tobytes()
    return ds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_stores(
    engine: Engine, datasets: list[Dataset], out: Path, started: list[float] | None = None, **outputs
) -> list[float]:
    """Seconds per C-STORE, each answered with success, through one association to a fresh node;
    ``started`` gets the time of each request. Outboxes among ``outputs`` send in the background
    until the last answer, and a little after (10 s at most) until they are empty."""
    from pynetdicom import AE

    port = _free_port()
    node = Node(engine, None, out, **outputs)
    stop, senders = node.send_on.start()
    server = node.server("127.0.0.1", port)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
    ae.dimse_timeout = ae.network_timeout = 300
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMOLENS")
    seconds = []
    try:
        if not assoc.is_established:
            raise SystemExit("the node refused the benchmark's association")
        for ds in datasets:
            t0 = time.perf_counter()
            if started is not None:
                started.append(t0)
            status = assoc.send_c_store(ds)
            seconds.append(time.perf_counter() - t0)
            if not status or status.Status != SUCCESS:
                raise SystemExit(f"the node answered status {getattr(status, 'Status', None)}")
    finally:
        assoc.release()
        server.shutdown()
        _drain(node, stop, senders)
    return seconds


def time_stow(
    engine: Engine, datasets: list[Dataset], out: Path, started: list[float] | None = None, **outputs
) -> list[float]:
    """Seconds per STOW-RS request (one instance each, sent by dicomweb-client), each answered with
    the instance stored, to a fresh node's DICOMweb service; otherwise as ``time_stores``."""
    from dicomweb_client.api import DICOMwebClient

    port = _free_port()
    node = Node(engine, None, out, web=DicomwebService(port), **outputs)
    out.mkdir(parents=True, exist_ok=True)
    stop, senders = node.send_on.start()
    node.web.start(node, "127.0.0.1")
    client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb", timeout=300)
    seconds = []
    try:
        for ds in datasets:
            t0 = time.perf_counter()
            if started is not None:
                started.append(t0)
            answer = client.store_instances([ds])
            seconds.append(time.perf_counter() - t0)
            if "FailedSOPSequence" in answer or len(answer.get("ReferencedSOPSequence", [])) != 1:
                raise SystemExit("the node's STOW-RS service did not store an image")
    finally:
        node.web.stop()
        _drain(node, stop, senders)
    return seconds


def _drain(node: Node, stop: threading.Event, senders: list[threading.Thread]) -> None:
    """Let the node's outboxes empty (10 s at most), then stop their threads."""
    deadline = time.monotonic() + 10
    while any(box.waiting() for box in node.send_on.outboxes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    node.send_on.stop(stop, senders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="../shared/data/fullres_samples")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    jpegs = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[: args.n]
    if not jpegs:
        raise SystemExit(f"--images {args.images}: no JPEG or PNG files")
    datasets = [as_dicom(p) for p in jpegs]
    sides = sorted(max(ds.Rows, ds.Columns) for ds in datasets)
    engine = Engine(Settings(model=args.model))
    engine.analyse(np.zeros((256, 256), np.float32), explain=True)  # warm: the first call pays for lazy imports
    print(
        f"{len(datasets)} images, longest side {sides[0]}-{sides[-1]} px (median {sides[len(sides) // 2]}); "
        f"{os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}"
    )
    columns = ["node writes", "images", "median s per image", "90th percentile", "max", "images per minute"]
    print("| " + " | ".join([*columns, "kB written per image"]) + " |")
    print("|---|---|---|---|---|---|---|")
    receivers = Receivers()
    lags, stow_lags = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, outputs) in enumerate(OUTPUTS.items()):
            out = Path(tmp) / str(i)
            started: list[float] = []
            send_on, dicomweb = outputs.get("send_on", False), outputs.get("dicomweb", False)
            if dicomweb:
                s = time_stow(engine, datasets, out, started, **receivers.stow_outbox(out))
            else:
                kwargs = receivers.outboxes(out) if send_on else outputs
                s = time_stores(engine, datasets, out, started, **kwargs)
            written = len(list(out.glob("*.dcm")))
            # every object for every image, but a segmentation for a map that supports nothing
            if written < len(datasets) * (1 + len(outputs) - send_on - dicomweb - outputs.get("seg", False)):
                raise SystemExit(f"{name}: {written} files written for {len(datasets)} images")
            if dicomweb:
                if len(receivers.stow) != len(datasets):
                    raise SystemExit(f"{name}: {len(receivers.stow)} objects received by the PACS")
                stow_lags = [got - asked for asked, got in zip(started, receivers.stow, strict=True)]
            if send_on:
                if (len(receivers.fhir), len(receivers.hl7)) != (len(datasets), len(datasets)):
                    raise SystemExit(f"{name}: {len(receivers.fhir)} bundles, {len(receivers.hl7)} messages received")
                lags = [
                    (max(f, h) - a) for a, f, h in zip(started, receivers.fhir, receivers.hl7, strict=True)
                ]  # each in order: one sender thread per receiver
            q90 = float(np.quantile(s, 0.9))
            rate = 60 * len(s) / sum(s)
            files = [f for f in out.rglob("*") if f.is_file()]
            kb = sum(f.stat().st_size for f in files) / len(datasets) / 1000
            print(
                f"| {name} | {len(s)} | {statistics.median(s):.2f} | {q90:.2f} | {max(s):.2f} | {rate:.0f} | {kb:.0f} |"
            )
    if lags:
        print(
            f"\nFHIR and HL7 v2: from the modality's request to both receivers having the result, median "
            f"{statistics.median(lags):.2f} s, max {max(lags):.2f} s"
        )
    if stow_lags:
        print(
            f"DICOMweb: from the sender's STOW-RS request to the PACS having the picture, median "
            f"{statistics.median(stow_lags):.2f} s, max {max(stow_lags):.2f} s"
        )


if __name__ == "__main__":
    main()
