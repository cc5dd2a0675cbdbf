"""Fixtures on a small real subset of ../shared/data (symlinked into a temp dir, never copied)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pneumolens.config import CLASS_NAMES

SHARED = Path(os.environ.get("PNEUMOLENS_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
CHEST = SHARED / "chest_xray"
FULLRES = SHARED / "fullres_samples"
ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (the folder is not a package); like running the
    script, its folder goes on ``sys.path`` so that the scripts' imports of each other resolve."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    if not CHEST.is_dir():
        skip = pytest.mark.skip(reason=f"shared data not found at {SHARED} (set PNEUMOLENS_SHARED_DATA)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_state(tmp_path_factory):
    """Preprocessing caches and the audit trail of the tests go to a temporary directory, never to
    ~/.cache or ~/.local/share."""
    private = tmp_path_factory.mktemp("state")
    names = {"PNEUMOLENS_CACHE_DIR": private / "cache", "PNEUMOLENS_AUDIT_URL": f"sqlite:///{private / 'audit.sqlite'}"}
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(v) for k, v in names.items()})
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_refused(capsys, base: list[str], cases) -> None:
    """Each command ``base + extra`` of ``cases`` ((extra, message) pairs) stops with an exit status
    other than 0 and ``message`` on stderr: a flag error caught before any work."""
    from pneumolens.cli import main

    for extra, message in cases:
        assert main(base + extra) != 0, extra
        assert message in capsys.readouterr().err, extra


def real_images(split: str, label: str, n: int) -> list[Path]:
    """The first n files of a class, spread over patients (every k-th file)."""
    files = sorted((CHEST / split / label).iterdir())
    step = max(1, len(files) // n)
    return files[::step][:n]


def link_dataset(root: Path, per_class: dict[str, dict[str, int]]) -> Path:
    """A Kaggle-layout dataset of symlinks: per_class = {split: {label: n}}."""
    for split, counts in per_class.items():
        for label, n in counts.items():
            d = root / split / label
            d.mkdir(parents=True)
            for f in real_images(split, label, n):
                (d / f.name).symlink_to(f)
    return root


def nlm_subset(folder: Path, choose) -> Path:
    """A copy of the NLM lung-mask folder at ``folder`` with the manifest rows ``choose(rows)`` keeps
    (dicts) and their images and masks linked, for trainers that read it."""
    import csv

    source = SHARED / "lung_masks"
    (folder / "images").mkdir(parents=True)
    with open(source / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = choose(rows)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    (folder / "masks").mkdir()
    for r in keep:
        for kind in ("images", "masks"):
            (folder / kind / f"{r['id']}.png").symlink_to(source / kind / f"{r['id']}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """40 + 40 training images and 12 + 12 test images from the real set."""
    return link_dataset(
        tmp_path_factory.mktemp("tiny"),
        {"train": dict.fromkeys(CLASS_NAMES, 40), "test": dict.fromkeys(CLASS_NAMES, 12)},
    )


def train_cli(data: Path, out: Path, *extra: str, preset: str = "seed", epochs: int = 1, size: int = 32) -> int:
    """``pneumolens train`` through the CLI entry point, small and fast by default."""
    from pneumolens.cli import main

    args = ["train", "--data", str(data), "--out", str(out), "--preset", preset]
    return main([*args, "--epochs", str(epochs), "--image-size", str(size), *extra])


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A run directory from a 2-epoch seed-preset training at 32 px (CLI path, worker processes on)."""

    out = tmp_path_factory.mktemp("run") / "seed"
    rc = train_cli(tiny_data, out, "--seed", "3", epochs=2)
    assert rc == 0
    return out


PATIENT_NAME, PATIENT_ID = "Testperson^Alice", "PID-SECRET-4711"


def make_dicom(
    path: Path,
    pixels,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    with_pixels: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    syntax: str = "explicit",
    patient_id: str = PATIENT_ID,
) -> Path:
    """Write a DX DICOM file holding ``pixels`` (uint8 or uint16, (H, W) or (frames, H, W)), with a
    patient name and id that must never show up in pneumolens' output.

    ``syntax``: "explicit" (little endian, uncompressed), "big-endian" (explicit), "deflated", "rle", or
    one of imagecodecs' lossless encodings, "jpeg-lossless" (process 14, selection value 1), "jpeg-ls"
    and "jpeg2000"."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, patient_id, "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
    bits = 16 if arr.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    if with_pixels:
        ds.PixelData = arr.tobytes()
    if syntax == "big-endian":  # retired, and still sent by old modalities
        from pydicom.uid import ExplicitVRBigEndian

        meta.TransferSyntaxUID = ExplicitVRBigEndian
        if with_pixels:
            ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.save_as(path, enforce_file_format=True)
        return path
    if syntax == "deflated":
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif syntax == "rle":
        from pydicom.uid import RLELossless

        ds.compress(RLELossless)  # pydicom's own encoder
    elif syntax != "explicit":
        import imagecodecs
        from pydicom import uid
        from pydicom.encaps import encapsulate

        encoders = {
            "jpeg-lossless": (lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1), uid.JPEGLosslessSV1),
            "jpeg-ls": (lambda a: imagecodecs.jpegls_encode(a, level=0), uid.JPEGLSLossless),
            "jpeg2000": (lambda a: imagecodecs.jpeg2k_encode(a, level=0, codecformat="J2K"), uid.JPEG2000Lossless),
        }
        encode, meta.TransferSyntaxUID = encoders[syntax]
        frames_ = arr if arr.ndim == 3 else arr[None]
        ds.PixelData = encapsulate([encode(np.ascontiguousarray(f)) for f in frames_])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_certificates(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    files: dict[str, str] = {}

    def issue(name: str, issuer_name: str | None, issuer_key, ca: bool, san: list | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]) if issuer_name else subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (folder / f"{name}.key").write_bytes(pem_key)
        files[name], files[f"{name}_key"] = str(folder / f"{name}.pem"), str(folder / f"{name}.key")
        return key

    ca_key = issue("ca", None, None, ca=True)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    issue("server", "ca", ca_key, ca=False, san=san)
    issue("client", "ca", ca_key, ca=False)
    return files


def store_then_wait(node, dataset, done, seconds: float = 5.0) -> None:
    """Run ``node`` (``Node.run`` on a free port), hand it ``dataset`` as a C-STORE once it listens,
    and stop it once ``done()`` holds (or after ``seconds``)."""
    import threading
    from types import SimpleNamespace

    from pneumolens.integration.dicom_node import SUCCESS

    stop = threading.Event()

    def store() -> None:
        assert node.handle_store(SimpleNamespace(dataset=dataset, file_meta=dataset.file_meta)) == SUCCESS
        for _ in range(int(seconds / 0.02)):
            if done():
                break
            threading.Event().wait(0.02)
        stop.set()

    node.run("127.0.0.1", free_port(), stop, on_ready=store)


class StandIn:
    """Another system's HTTP server (a FHIR server, an EHR's authorisation server, a PACS's
    DICOMweb service) on 127.0.0.1, answering in a daemon thread with ``handler`` (a
    ``BaseHTTPRequestHandler`` class); ``base`` is its URL."""

    def __init__(self, handler) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def reply(handler, status: int, data: bytes, content_type: str) -> None:
    """Answer the request ``handler`` holds with ``status`` and the body ``data``."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def stand_ins():
    """Make stand-ins (``stand_ins(Class, *args)``, a ``StandIn`` subclass); all closed after the test."""
    made: list[StandIn] = []

    def make(kind, *args, **kwargs):
        made.append(kind(*args, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()
