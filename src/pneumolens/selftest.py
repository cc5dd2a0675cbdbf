"""``pneumolens selftest``: does this installation read a film as the model was recorded to?

A department's IT runs it after an install, an upgrade or a move to other hardware (an installation
and operational check): every part loads, a known answer comes out of the whole reading path (the
lung segmenter, the exposure and lung crop, CLAHE, the network, the flags and the map) for a
synthetic film made here, so that no patient's image ships with pneumolens, and the DICOM reader
gives that film back as it was stored. Each model's
known answer is kept in ``assets/selftest.json`` by its weights hash (``--record`` adds one); a
change to any preprocessing step moves the phantom's logit by 0.8 or more (measured on the shipped
model: CLAHE off +5.4, the lung gamma off +0.93, clip 0.02 instead of 0.01 -0.83), the tolerance
is 0.05.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

KNOWN_ANSWERS = "selftest.json"
ANSWERS_ENV = "PNEUMOLENS_SELFTEST_ANSWERS"  # a site's own answers file (``--record``), in place of the shipped
LOGIT_TOLERANCE = 0.05  # numerics across CPUs move it by about 1e-5; a changed preprocessing step by 0.8+


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable here (said why in ``detail``)
    detail: str
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAILED", None: "skipped"}[self.ok]


def phantom(height: int = 512, width: int = 448) -> np.ndarray:
    """A synthetic frontal chest film, (H, W) float32 in [0, 1]: two dark lung fields with rib-like
    bands, a bright spine, soft tissue brighter towards the top, and a fixed fine texture. Made from
    closed-form functions (no random generator, whose stream may change between numpy versions)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 0.75 - 0.1 * (y / height)
    for centre in (0.3, 0.7):
        e = ((x - centre * width) / (0.17 * width)) ** 2 + ((y - 0.45 * height) / (0.3 * height)) ** 2
        img = np.where(e < 1, 0.25 + 0.1 * e + 0.04 * np.sin(y / 9.0) ** 2, img)
    spine = slice(int(0.47 * width), int(0.53 * width))
    img[:, spine] = np.maximum(img[:, spine], 0.8)
    img += 0.01 * ((np.sin(12.9898 * x + 78.233 * y) * 43758.5453) % 1.0 - 0.5)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def known_answers(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The recorded answers by weights hash: ``path``, else ``$PNEUMOLENS_SELFTEST_ANSWERS``, else the
    ones that ship with pneumolens."""
    path = path or os.environ.get(ANSWERS_ENV) or None
    if path is not None:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    return json.loads((resources.files("pneumolens") / "assets" / KNOWN_ANSWERS).read_text())


def answer_of(engine: Any, explain: bool = True) -> dict[str, Any]:
    """What ``engine`` (``service.engine.Engine``) answers for the phantom: its logit, call and flags
    (and with ``explain``, whether its map is finite and the map's share on the lungs)."""
    result = engine.analyse(phantom(), explain=explain, heatmap_png=False)
    p = min(max(result["probability"], 1e-12), 1 - 1e-12)
    answer = {"logit": math.log(p / (1 - p)), "label": result["label"], "flags": result["flags"]}
    if explain:
        answer["map_finite"] = bool(np.isfinite(result["explanation"].heatmap).all())
        answer["lung_fraction"] = result["lung_fraction"]
    return answer


def differs(got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """How an answer differs from the recorded one, or None when it holds (the logit within the tolerance,
    the same call and flags)."""
    off = abs(got["logit"] - want["logit"])
    if off <= LOGIT_TOLERANCE and got["label"] == want["label"] and got["flags"] == want["flags"]:
        return None
    return (
        f"recorded: logit {want['logit']:.4f}, {want['label']}, flags {want['flags'] or 'none'}; "
        f"got logit {got['logit']:.4f}, {got['label']}, flags {got['flags'] or 'none'} "
        f"(logit off by {off:.4f}, allowed {LOGIT_TOLERANCE})"
    )


def check_at_start(engine: Any) -> str:
    """The known answer, at the start of ``serve``, ``listen`` and ``watch`` (no map: under 0.1 s). An answer
    unlike the one recorded for the weights stops the start: a service that would read films otherwise
    than its model was measured to does not serve them. Returns "as recorded" or "not recorded"."""
    want = known_answers().get(engine.loaded.sha256)
    if want is None:
        return "not recorded"
    problem = differs(answer_of(engine, explain=False), want)
    if problem:
        raise ValueError(
            f"{engine.loaded.path}: this installation reads the self-test film otherwise than recorded for these "
            f"weights ({problem}); not started: run `pneumolens selftest`, and reinstall"
        )
    return "as recorded"


def record(engine: Any, path: str | Path) -> dict[str, Any]:
    """Add (or replace) ``engine``'s model's answer in the answers file at ``path``."""
    answers = known_answers(path)
    got = {k: v for k, v in answer_of(engine).items() if k != "map_finite"}  # the map's share: for a reader
    answers[engine.loaded.sha256] = {"name": engine.loaded.meta.get("name", "unknown"), **got}
    Path(path).write_text(json.dumps(answers, indent=2, sort_keys=True) + "\n")
    return answers[engine.loaded.sha256]


def run_checks(model: str | None = None, db: str | None = None, answers: str | Path | None = None) -> list[Check]:
    """Every check, in order; one that raises is a failed check whose detail says why, and the
    checks that need what it would have made are skipped."""
    checks: list[Check] = []

    def check(name: str, fn: Callable[[], tuple[bool | None, str]]) -> bool:
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:  # said, not raised: the table is the point
            ok, detail = False, f"{type(e).__name__}: {e}"
        checks.append(Check(name, ok, detail, time.perf_counter() - t0))
        return ok is not False

    check("software", _software)
    engine: list[Any] = []
    if check("model", lambda: _model(model, engine)):
        loaded = engine[0].loaded
        check("recorded test figures", lambda: _recorded(loaded))
        check("known answer", lambda: _known_answer(engine[0], answers))
        check("ONNX export", lambda: _onnx(engine[0]))
    else:
        for name in ("recorded test figures", "known answer", "ONNX export"):
            checks.append(Check(name, None, "no model to check"))
    check("lung segmenter and orientation checks", _helpers)
    check("DICOM decoders", _decoders)
    check("DICOM reading", _dicom_round_trip)
    check("settings from the environment", _settings)
    check("audit trail", lambda: _audit(db))
    return checks


def _software() -> tuple[bool, str]:
    import onnxruntime
    import pydicom
    import torch

    import pneumolens

    return True, (
        f"pneumolens {pneumolens.__version__}, python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, pydicom {pydicom.__version__}, {platform.machine()}"
    )


def _model(model: str | None, made: list[Any]) -> tuple[bool, str]:
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    engine = Engine(Settings(model=model, audit=False), known_answer=False)  # checked below, with its reasons
    made.append(engine)
    loaded = engine.loaded
    return True, f"{loaded.meta.get('name', 'unknown')} ({loaded.path}), weights sha256 {loaded.sha256[:16]}"


def _recorded(loaded: Any) -> tuple[bool | None, str]:
    from pneumolens.evaluation.model_card import shipped_test_record

    record = shipped_test_record(loaded.sha256)
    if record is None:
        return None, "not the shipped weights: no test figures recorded beside them"
    return True, f"the shipped weights: test accuracy {record['accuracy']:.1%} on {record['n']} films recorded"


def _known_answer(engine: Any, answers: str | Path | None) -> tuple[bool | None, str]:
    got = answer_of(engine)
    want = known_answers(answers).get(engine.loaded.sha256)
    said = f"phantom: logit {got['logit']:.4f}, {got['label']}, flags {got['flags'] or 'none'}"
    if not got["map_finite"]:
        return False, f"{said}; the map holds NaN or infinite values"
    if want is None:
        return None, f"{said}; no answer recorded for these weights (`pneumolens selftest --record FILE`)"
    problem = differs(got, want)
    if problem:
        return False, f"{problem}: this installation reads films differently"
    return True, f"{said}, as recorded (logit off by {abs(got['logit'] - want['logit']):.1e})"


def _onnx(engine: Any) -> tuple[bool, str]:
    import torch

    from pneumolens.data.images import preprocess
    from pneumolens.export import OnnxModel, export_onnx

    loaded = engine.loaded
    gray = phantom()
    x = preprocess(gray, loaded.preprocess, engine.segmenter.mask(gray, full_size=False))[None]
    with torch.inference_mode():
        want = float(loaded.model(torch.from_numpy(x)).float()[0])
    with tempfile.TemporaryDirectory(prefix="pneumolens-selftest-") as tmp:
        got = float(OnnxModel(export_onnx(loaded, Path(tmp) / "model.onnx")).logits(x)[0])
    ok = abs(got - want) < 1e-3
    return ok, f"ONNX Runtime logit {got:.5f}, torch {want:.5f}" + ("" if ok else ": they differ")


def _helpers() -> tuple[bool, str]:
    from pneumolens.lungs.orientation import SHIPPED, OrientationCheck
    from pneumolens.lungs.segment import LungSegmenter

    segmenter = LungSegmenter.shipped()
    found = float(segmenter.mask(phantom(), full_size=False).mean())
    said = [f"P({t}ed) {OrientationCheck.shipped(t).probabilities([phantom()])[0]:.3f}" for t in SHIPPED]
    ok = found > 0.05
    return ok, (
        f"segmenter {segmenter.sha256[:16]} finds lungs on {found:.0%} of the phantom (5% at least); "
        f"orientation checks on it: {', '.join(said)}"
    )


def _decoders() -> tuple[bool, str]:
    from pydicom.pixels.decoders.base import get_decoder

    from pneumolens.integration.dicom_node import TRANSFER_SYNTAXES

    missing = []
    for uid in TRANSFER_SYNTAXES:
        if uid.is_compressed and not get_decoder(uid).is_available:
            missing.append(uid.name)
    if missing:
        return False, f"cannot decode {', '.join(missing)}: a film sent so would be refused"
    return True, f"all {len(TRANSFER_SYNTAXES)} transfer syntaxes the DICOM node accepts can be decoded"


def _dicom_round_trip() -> tuple[bool, str]:
    """The phantom as a 12-bit CR film, uncompressed and in RLE Lossless (pydicom's own encoder), read
    back through the reader every input takes: the stored values, through a viewer's auto-window."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    from pneumolens.data.images import read_image

    stored = np.round(phantom() * 4095).astype(np.uint16)
    want = (stored - stored.min()) / float(stored.max() - stored.min())  # no window in the header: its range
    worst = 0.0
    for syntax in (ExplicitVRLittleEndian, RLELossless):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored.tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        worst = max(worst, float(np.abs(read_image("selftest.dcm", data=buf.getvalue()) - want).max()))
    ok = worst < 1e-4
    return ok, f"a 12-bit CR film, uncompressed and in RLE, read back off by at most {worst:.1e}" + (
        "" if ok else ": the DICOM reader changed"
    )


def _settings() -> tuple[bool, str]:
    from pneumolens.data.scope import body_part_terms, max_training_age
    from pneumolens.service.settings import Settings

    Settings()  # PNEUMOLENS_* values out of range or malformed raise, naming the setting
    age = max_training_age()
    parts = ", ".join(body_part_terms())
    caution = f"above {age} years" if age is not None else "off"
    return True, f"serve's settings valid; the age caution {caution}; body parts {parts}"


def _audit(db: str | None) -> tuple[bool, str]:
    from pneumolens.monitoring.audit import AuditLog

    trail = AuditLog(db)
    report = trail.verify()
    return report.problem is None, f"{trail.url.split(':')[0]}: {report}"


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{c.name:<{width}}  {c.status:<7}  {c.detail}" for c in checks]
    failed = sum(c.ok is False for c in checks)
    lines.append(f"\n{len(checks) - failed} of {len(checks)} checks passed or do not apply; {failed} failed")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    return json.dumps([{**asdict(c), "status": c.status} for c in checks], indent=2)
