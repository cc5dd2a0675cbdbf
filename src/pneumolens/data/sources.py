"""Finding labelled images: class folders, Kaggle roots and CSV manifests."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pneumolens.config import CLASS_NAMES
from pneumolens.data.dicom import is_dicom, patient_identity
from pneumolens.data.images import IMAGE_SUFFIXES
from pneumolens.data.scope import parse_age

log = logging.getLogger(__name__)

LAYOUT_HELP = (
    "expected a dataset root with train/ and test/ (each holding NORMAL/ and PNEUMONIA/), "
    "a folder holding NORMAL/ and PNEUMONIA/, or a CSV manifest with columns path,label"
)


class DataLayoutError(ValueError):
    """The data path does not have a layout pneumolens can read."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # index into CLASS_NAMES; 1 = PNEUMONIA
    patient: str
    group: str = ""  # a manifest's ``group`` column (scanner, site, ...); "" for the file name's own
    age: float | None = None  # a manifest's ``age`` column, in years; None: not given (a DICOM header may say)


_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)
# IM-XXXX-YYYY and NORMAL2-IM-XXXX-YYYY(-Z): XXXX is the patient. Both spellings share one key:
# whether NORMAL2-IM-0458 and IM-0458 are one child is unknown, and merging can only prevent leakage.
_IM = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


def patient_id(path: str | os.PathLike[str]) -> str:
    """The patient a Kaggle file name belongs to; unknown names count as their own patient."""
    name = Path(path).name
    if m := _PERSON.match(name):
        return f"person{int(m.group(1))}"
    if m := _IM.match(name):
        return f"IM-{int(m.group(1))}"
    return f"file:{Path(path).stem}"


def with_dicom_patients(samples: list[Sample]) -> list[Sample]:
    """Group DICOM films by the Patient ID in their headers (with its issuer, when given).

    A film whose name says nothing of its patient (``file:`` keys) is its own patient; a DICOM
    film's header does say. Films that share a Patient ID get the key ``dicom-patient-N``, N
    counting distinct patients in the order of ``samples``: the same listing gives the same keys
    (so a seeded split repeats), and the key tells nothing of the ID, which is not kept. Films
    without a Patient ID stay their own patient. This is what keeps one patient's films on one
    side of a validation split and makes bootstrap intervals resample patients, not films."""
    numbers: dict[tuple[str, str], int] = {}
    out = []
    for s in samples:
        identity = None
        if s.patient.startswith("file:"):
            if is_dicom(_head(s.path), s.path):
                identity = patient_identity(s.path)
        if identity is None:
            out.append(s)
            continue
        n = numbers.setdefault(identity, len(numbers) + 1)
        out.append(replace(s, patient=f"dicom-patient-{n}"))
    if numbers:
        n_films = sum(s.patient.startswith("dicom-patient-") for s in out)
        log.info("grouped %d DICOM film(s) into %d patient(s) by their Patient ID", n_films, len(numbers))
    return out


def kaggle_samples(paths: list[str]) -> list[Sample]:
    """Samples for paths in Kaggle class folders (a run's ``split.json`` lists them): the label from
    the folder (``PNEUMONIA`` in any case, or not), the patient from the file name."""
    return [Sample(p, int(Path(p).parent.name.upper() == CLASS_NAMES[1]), patient_id(p)) for p in paths]


def class_folders(root: Path) -> dict[str, Path]:
    """The class folders directly under ``root``, by class name, matched in any case (``normal/``,
    ``Pneumonia/``); ``DataLayoutError`` when two folders spell one class."""
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        name = child.name.upper()
        if name in CLASS_NAMES and child.is_dir():
            if name in found:
                raise DataLayoutError(f"{root}: both {found[name].name}/ and {child.name}/ hold {name} films")
            found[name] = child
    return found


def _label_index(label: str, where: str) -> int:
    key = label.strip().upper()
    if key in ("0", "1"):
        return int(key)
    if key not in CLASS_NAMES:
        raise DataLayoutError(f"{where}: unknown label {label!r}; valid: {', '.join(CLASS_NAMES)}, 0, 1")
    return CLASS_NAMES.index(key)


def image_files(
    folder: str | os.PathLike[str], exclude: Path | None = None, left_out: list[Path] | None = None
) -> list[Path]:
    """JPEG / PNG / TIFF / DICOM files under ``folder``, sorted: by their suffix, and DICOM files named
    without one (``sniffed_dicom``); hidden files and folders skipped, and ``exclude`` (an output
    folder inside it) too. Symlinked folders are not followed (no loops); symlinked files with an
    image suffix are kept even when broken or looping, so that each gets its own error. ``left_out``,
    when given, receives the other files (sorted; hidden ones and a CD's ``DICOMDIR`` index apart), so
    that a caller can say what it did not read rather than pass over it in silence."""
    found, other = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and (exclude is None or Path(root, d).resolve() != exclude)]
        for name in files:
            path = Path(root, name)
            if name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES or sniffed_dicom(path):
                found.append(path)
            elif name.upper() != "DICOMDIR":
                other.append(path)
    if left_out is not None:
        left_out += sorted(other)
    return sorted(found)


def said_left_out(folder: str | os.PathLike[str], left_out: list[Path], shown: int = 3) -> str | None:
    """One line naming the files of ``folder`` that were not read for their kind (``image_files``'s
    ``left_out``), the first ``shown`` by name; None when there are none."""
    if not left_out:
        return None
    names = ", ".join(p.relative_to(folder).as_posix() for p in left_out[:shown])
    more = f" and {len(left_out) - shown} more" if len(left_out) > shown else ""
    return (
        f"{folder}: left out {len(left_out)} file(s) that are not JPEG, PNG, TIFF or DICOM by their name "
        f"or DICOM mark: {names}{more}"
    )


def sniffed_dicom(path: Path) -> bool:
    """Whether a file named without an image suffix is a DICOM file, as PACS and CD exports name them
    (``IM0001``, ``00000042``, a UID such as ``1.2.840.113619.2.55.3.17``): no suffix, or a numeric
    one, and the ``DICM`` mark after the preamble. A ``DICOMDIR`` (the index of a CD) is not an image."""
    if path.name.upper() == "DICOMDIR" or not (path.suffix == "" or path.suffix[1:].isdigit()):
        return False
    return is_dicom(_head(path))  # unreadable or a broken link: no mark, not known to be an image


def _head(path: str | os.PathLike[str]) -> bytes:
    """A file's first 132 bytes (where a DICOM file's ``DICM`` mark ends); empty when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def _list_class_folder(folder: Path, label: int) -> list[Sample]:
    left_out: list[Path] = []
    files = image_files(folder, left_out=left_out)
    if not files:
        raise DataLayoutError(f"{folder}: class folder has no {'/'.join(sorted(IMAGE_SUFFIXES))} or DICOM files")
    if note := said_left_out(folder, left_out):
        log.warning(note)
    return [Sample(str(p), label, patient_id(p)) for p in files]


def list_folder(root: str | os.PathLike[str]) -> list[Sample]:
    """Samples of a folder holding NORMAL/ and PNEUMONIA/ subfolders (in any case)."""
    root = Path(root)
    folders = class_folders(root)
    missing = [name for name in CLASS_NAMES if name not in folders]
    if missing:
        raise DataLayoutError(f"{root}: class folder(s) {', '.join(missing)} missing ({LAYOUT_HELP})")
    samples: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        samples += _list_class_folder(folders[name], label)
    return samples


def read_manifest(csv_path: str | os.PathLike[str]) -> list[Sample]:
    """Samples from a CSV with columns ``path,label`` (optional ``patient``, ``group`` for the
    subgroups ``evaluate`` reports, and ``age``: years or a DICOM age such as ``045Y``, for the age
    caution and ``--group-by age-band`` of films without a DICOM header); paths may be relative to the
    CSV's folder."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    samples = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataLayoutError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} ({LAYOUT_HELP})")
        for i, row in enumerate(reader, start=2):
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            label = _label_index(row["label"], f"{csv_path}:{i}")
            try:
                age = parse_age(row.get("age") or "")
            except ValueError as e:
                raise DataLayoutError(f"{csv_path}:{i}: {e}") from None
            patient, group = row.get("patient") or patient_id(p), (row.get("group") or "").strip()
            samples.append(Sample(str(p), label, patient, group, age))
    if not samples:
        raise DataLayoutError(f"{csv_path}: manifest has no rows")
    return samples


def write_manifest(csv_path: str | os.PathLike[str], samples: list[Sample]) -> None:
    """Write ``samples`` as a manifest :func:`read_manifest` reads back (absolute paths, class names,
    patients, and groups and ages when any sample has one)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    grouped, aged = any(s.group for s in samples), any(s.age is not None for s in samples)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient", *(["group"] if grouped else []), *(["age"] if aged else [])])
        for s in samples:
            age = "" if s.age is None else f"{s.age:g}"
            row = [str(Path(s.path).resolve()), CLASS_NAMES[s.label], s.patient]
            w.writerow(row + ([s.group] if grouped else []) + ([age] if aged else []))


def find_split(data: str | os.PathLike[str], split: str) -> list[Sample]:
    """The samples of ``split`` ("train" or "test") under a dataset path.

    ``data`` may be a Kaggle root (``data/split/{NORMAL,PNEUMONIA}``; for "train", a ``val/``
    beside it is pooled in), a class-folder directory (used as is, whatever the split), or a CSV
    manifest. DICOM films whose name gives no patient are grouped by the Patient ID in their
    headers (:func:`with_dicom_patients`).
    """
    data = Path(data)
    if not data.exists():
        raise DataLayoutError(f"{data}: no such file or directory")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataLayoutError(f"{data}: is a file but not a .csv manifest ({LAYOUT_HELP})")
        return with_dicom_patients(read_manifest(data))
    if (data / split).is_dir():
        samples = list_folder(data / split)
        if split == "train" and (data / "val").is_dir():
            # Kaggle's own val/ holds 16 images: too few to select on. Pool it with train/ and
            # carve validation by patient instead.
            samples += list_folder(data / "val")
        return with_dicom_patients(samples)
    if class_folders(data):
        return with_dicom_patients(list_folder(data))
    raise DataLayoutError(f"{data}: no {split}/ folder and no class folders ({LAYOUT_HELP})")


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def duplicate_groups(samples: list[Sample]) -> list[list[Sample]]:
    """Groups of byte-identical files (two or more each). Unreadable files are left out."""
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        try:
            by_hash[file_digest(s.path)].append(s)
        except OSError:
            continue
    return [g for g in by_hash.values() if len(g) > 1]


def check_headers(samples: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Split samples into those whose header opens as an image and those that do not.

    Only the header is read (cheap); truncated pixel data is caught later, at load time.
    """
    good, bad = [], []
    for s in samples:
        try:
            with open(s.path, "rb") as f:
                head = f.read(132)
            if is_dicom(head, s.path):
                import pydicom

                try:
                    pydicom.dcmread(s.path, stop_before_pixels=True, force=True).Rows  # noqa: B018
                except Exception as e:  # noqa: BLE001 - a corrupt header raises almost any type
                    raise ValueError(f"not a readable DICOM file ({type(e).__name__})") from None
            else:
                with Image.open(s.path) as img:
                    img.size  # noqa: B018 - opening parses the header
            good.append(s)
        except Image.DecompressionBombError:
            bad.append((s.path, "header claims too many pixels, refused before decoding"))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, AttributeError, EOFError) as e:
            reason = "not a JPEG, PNG, TIFF or DICOM image" if isinstance(e, UnidentifiedImageError) else str(e)
            bad.append((s.path, reason))
    return good, bad
