"""What the command groups share: argument types and flags, the notice, the service engine."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

DEFAULT_DATA_ENV = "PNEUMOLENS_DATA"
NOTICE = "Decision support only: pneumolens does not make a diagnosis; a clinician reads the X-ray."


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def port(s: str) -> int:
    """A TCP port to listen on (before, 99999 reached the socket and ended in an OverflowError's traceback)."""
    v = int(s)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 1-65535, got {s}")
    return v


def positive_seconds(s: str) -> float:
    v = float(s)
    if not 0 < v < math.inf:  # NaN too; an infinite wait ends in an OverflowError
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {s}")
    return v


def fraction(s: str) -> float:
    v = float(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {s}")
    return v


def json_object(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {s}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f'must be a JSON object such as {{"dropout": 0.5}}, got {s}')
    return v


def probability(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def patient_age(s: str) -> float | None:
    """A patient's age in years from years or a DICOM age string (the value is not echoed)."""
    from pneumolens.data.scope import given_age

    try:
        return given_age(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("age: ")) from None


def devices(s: str) -> int | str:
    return s if s == "auto" else positive_int(s)


def writable(flag: str, path: str | None, folder: bool = False) -> None:
    """Fail before the work, not after it: the output file (or ``folder``) ``path`` can be written.
    Its parent folders are made, as the command would make them; a file is not left where none was."""
    if not path:
        return
    p = Path(path)
    try:
        if folder:
            p.mkdir(parents=True, exist_ok=True)
            if not os.access(p, os.W_OK):
                raise PermissionError(13, "Permission denied")
            return
        existed = p.exists()
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a"):
            pass
        if not existed:
            p.unlink()
    except (FileExistsError, NotADirectoryError):  # a file where a folder of the path should be
        raise ValueError(f"{flag} {path}: cannot be written (a folder on its path is a file)") from None
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot be written ({e.strerror or e})") from None


def data_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    env = os.environ.get(DEFAULT_DATA_ENV)
    p.add_argument(
        "--data",
        default=env,
        required=required and env is None,
        help=f"dataset root, class-folder directory or CSV manifest (default: ${DEFAULT_DATA_ENV})",
    )


def tls_flags(parser: argparse.ArgumentParser, prefix: str, cert: str, whose: str, ca: str | None = None) -> None:
    """``PREFIX-cert``, ``PREFIX-key`` and ``PREFIX-ca``: a PEM certificate, its key, and the CA that
    signed ``whose`` certificate (or the ``ca`` help given)."""
    parser.add_argument(f"{prefix}-cert", help=cert)
    parser.add_argument(f"{prefix}-key", help=f"TLS: the PEM private key of {prefix}-cert")
    parser.add_argument(f"{prefix}-ca", help=f"TLS: {ca or f'the PEM CA that signed {whose} certificate'}")


def engine_for(model: str | None):
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    return Engine(Settings(**({"model": model} if model else {})))


def db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="audit database, a SQLAlchemy URL (default: $PNEUMOLENS_AUDIT_URL or SQLite)")
