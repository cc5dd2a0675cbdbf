"""Command line: ``pneumolens train | evaluate | calibrate | compare | card | predict | explain | segment | serve |
export | ensemble | listen | pull | watch | selftest | audit | review | outbox | orders | fhir-key | train-lungs |
train-orientation | train-age-check``.

The subcommands live in modules by what they are for: ``training`` (making model files),
``evaluation`` (measuring, recalibrating, comparing and describing one on labelled films),
``reading`` (reading films with one), ``clinical`` (the model at work in a department),
``monitoring`` (its audit trail, drift and agreement with the readers) and ``sending`` (its results
sent on to the EHR and the RIS, and the outboxes that hold them).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pneumolens.cli.common import DEFAULT_DATA_ENV, NOTICE
from pneumolens.cli.training import RECIPE_FLAGS, train_config

__all__ = ["DEFAULT_DATA_ENV", "NOTICE", "RECIPE_FLAGS", "build_parser", "configure_logging", "main", "train_config"]


def build_parser() -> argparse.ArgumentParser:
    from pneumolens import __version__
    from pneumolens.cli import clinical, evaluation, monitoring, reading, sending, training

    about = "Train, evaluate, explain and serve a model that reads chest X-rays for pneumonia."
    parser = argparse.ArgumentParser(prog="pneumolens", description=about, epilog=NOTICE)
    parser.add_argument("--version", action="version", version=f"pneumolens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, evaluation, reading, clinical, monitoring, sending):
        group.add_parsers(sub)  # each subcommand's parser names its function: set_defaults(run=...)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Log lines to stderr, each once. The ``lightning`` package gives its logger a handler of its own
    when imported (later, by the commands that train), and Lightning's records would reach both that
    handler and the root's: every Trainer line twice. They stay with Lightning's handler alone."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False


def main(argv: list[str] | None = None) -> int:
    from pneumolens.checkpoint import ModelFileError
    from pneumolens.data.images import ImageReadError
    from pneumolens.data.sources import DataLayoutError

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.run(args)
    except (DataLayoutError, ModelFileError, ImageReadError, ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"pneumolens {args.command}: error: {e}", file=sys.stderr)
        return 2
